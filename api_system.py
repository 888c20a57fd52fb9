"""System views: health (storage, database, queue depths, versions) and metrics."""
from __future__ import annotations

import logging
import platform
from collections import Counter, defaultdict
from datetime import timedelta
from importlib import metadata
from typing import Any

from api_listing import number
from engine_status import known_code
from errors import ErrorCode, OrchestratorError
from logs import log_event
from models import Status, utcnow
from task_manager import Engine

logger = logging.getLogger(__name__)
Response = tuple[int, dict[str, Any]]
PACKAGES = ("azure-functions", "azure-data-tables", "azure-storage-queue", "azure-storage-blob", "pydantic",
            "rasterio", "rio-cogeo", "pystac", "psycopg", "pypgstac")
METRICS_MAX_JOBS = 200


def versions() -> dict[str, str]:
    """Python, GDAL and the packages that matter."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import rasterio

        found["gdal"] = rasterio.__gdal_version__
    except ImportError:
        pass
    return found


def health(engine: Engine) -> Response:
    """GET /api/health: 200 when storage (and the database, when configured) answer, else 503 naming the part.

    A database failure is shown as ``database unreachable`` only: its text can name the server and the
    user, so the detail goes to the function log (redacted), not to whoever calls this.
    """
    checks = engine.repos.probe()
    if engine.settings.pgstac_host:
        try:
            checks["database"] = {"ok": True, "items_checked": engine.io.pgstac().count_items("__health__")}
        except OrchestratorError as exc:
            log_event(logger, "health_database_failed", logging.WARNING, error=exc.message)
            checks["database"] = {"ok": False, "error": "database unreachable"}
    failing = sorted(name for name, c in checks.items() if not c["ok"])
    body = {"status": "unhealthy" if failing else "healthy", "failing": failing, "checks": checks,
            "queues": checks.get("queues", {}).get("depths", {}), "versions": versions()}
    return (503 if failing else 200), body


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[rank], 3)


def metrics(engine: Engine, window_s: str | None = None) -> Response:
    """GET /api/metrics: jobs by status and type; per task type over recent jobs: count, failure rate,
    failures by error code, duration p50/p95/p99; failures by code over all task types; queue depths."""
    window = number(window_s, "window_s", 3600.0, 1, 30 * 86400)
    since = utcnow() - timedelta(seconds=window)
    by_status: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    recent: list[str] = []
    token = None
    while True:
        rows, token = engine.store.list_jobs(None, None, 1000, token)
        for row in rows:
            by_status[row["status"]] += 1
            by_type[row["job_type"]] += 1
            if row["updated_at"] >= since and len(recent) < METRICS_MAX_JOBS:
                recent.append(row["job_id"])
        if token is None:
            break
    durations: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    codes: dict[str, Counter[str]] = defaultdict(Counter)
    for job_id in recent:
        for t in engine.store.task_timings(job_id):
            counts[t["task_type"]][t["status"]] += 1
            if t["status"] == Status.FAILED.value:
                codes[t["task_type"]][known_code(t.get("error_code")) or ErrorCode.TASK_FAILED] += 1
            if t.get("started_at") and t.get("ended_at") and t["status"] == Status.COMPLETED.value:
                durations[t["task_type"]].append((t["ended_at"] - t["started_at"]).total_seconds())
    task_types = {}
    for task_type, c in sorted(counts.items()):
        ended = c["completed"] + c["failed"]
        d = durations[task_type]
        task_types[task_type] = {"count": sum(c.values()), "completed": c["completed"], "failed": c["failed"],
                                 "failure_rate": round(c["failed"] / ended, 4) if ended else 0.0,
                                 "failures_by_code": dict(sorted(codes[task_type].items())),
                                 "duration_s": {"p50": _percentile(d, 50), "p95": _percentile(d, 95),
                                                "p99": _percentile(d, 99)}}
    queues = engine.repos.probe().get("queues", {}).get("depths", {})
    return 200, {"window_s": window, "jobs_in_window": len(recent),
                 "jobs": {"by_status": dict(by_status), "by_type": dict(by_type)},
                 "task_types": task_types, "failures_by_code": dict(sorted(sum(codes.values(), Counter()).items())),
                 "queues": queues}

"""Read-only views: jobs newest first, a job's tasks, one task, stuck jobs, the job types."""
from __future__ import annotations

import base64
import json
import math
from typing import Any

import engine_jobs
import engine_links
from config import get_settings
from api_models import JobPage, JobSummary, JobTypeInfo, JobTypes, StageInfo, TaskPage
from engine_status import task_view
from errors import BadRequestError, NotFoundError, echo
from models import Status, parse_task_id, utcnow
from task_manager import Engine

Response = tuple[int, dict[str, Any]]
MAX_LIMIT = 1000


def encode_token(token: dict[str, str] | None) -> str | None:
    """Opaque continuation token for clients."""
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode() if token else None


def decode_token(token: str | None) -> dict[str, str] | None:
    """Inverse of ``encode_token``; BadRequestError for anything else."""
    if not token:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(value, dict) and set(value) <= {"PartitionKey", "RowKey"}:
            return value
    except (ValueError, UnicodeDecodeError):
        pass
    raise BadRequestError("invalid continuation token: pass back the 'continuation' value of the previous page")


def number(value: str | None, name: str, default: float, low: float, high: float) -> float:
    """A finite query number within [low, high], else BadRequestError naming the parameter."""
    if value in (None, ""):
        return default
    try:
        parsed = float(value)
    except (TypeError, ValueError):
        raise BadRequestError(f"{name} must be a number, got {echo(value)}") from None
    if not math.isfinite(parsed) or not low <= parsed <= high:
        raise BadRequestError(f"{name} must be a number between {low:g} and {high:g}, got {echo(value)}")
    return parsed


def flag(value: str | None, name: str) -> bool:
    """A boolean query parameter: true/false (also 1/0, yes/no); anything else is a 400."""
    text = (value or "false").strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise BadRequestError(f"{name} must be true or false, got {echo(value)}")


def limit_of(value: str | int | None, default: int = 50) -> int:
    """The ``limit`` query parameter, 1..MAX_LIMIT."""
    try:
        limit = int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        raise BadRequestError(f"limit must be a whole number, got {echo(value)}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def _status(value: str | None) -> Status | None:
    if not value:
        return None
    try:
        return Status(value)
    except ValueError:
        raise BadRequestError(f"unknown status {echo(value)}; one of {', '.join(s.value for s in Status)}") from None


def _stage(value: str | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        stage = int(value)
    except ValueError:
        raise BadRequestError(f"stage must be a whole number, got {echo(value)}") from None
    if not 1 <= stage <= 99:
        raise BadRequestError(f"stage must be between 1 and 99, got {stage}")
    return stage


def list_jobs(engine: Engine, base_url: str, status: str | None = None, job_type: str | None = None,
              limit: str | None = None, continuation: str | None = None) -> Response:
    """GET /api/jobs: newest first, filtered by status and job type, paged."""
    known = engine_jobs.job_types()
    if job_type and job_type not in known:
        raise BadRequestError(f"unknown job_type {echo(job_type)}; available: {', '.join(sorted(known))}")
    rows, nxt = engine.store.list_jobs(_status(status), job_type or None, limit_of(limit),
                                      decode_token(continuation))
    jobs = [JobSummary(status_url=f"{base_url}/api/jobs/status/{r['job_id']}",
                       **{k: r[k] for k in JobSummary.model_fields if k in r}) for r in rows]
    return 200, JobPage(jobs=jobs, continuation=encode_token(nxt)).model_dump(mode="json")


def task_page(engine: Engine, job_id: str, stage: str | int | None, status: str | None, limit: Any,
              continuation: str | None) -> TaskPage:
    """A page of a job's tasks."""
    tasks, nxt = engine.store.page_tasks(job_id, _stage(None if stage is None else str(stage)), _status(status),
                                         limit_of(limit, 100), decode_token(continuation))
    return TaskPage(tasks=[task_view(t) for t in tasks], continuation=encode_token(nxt))


def list_tasks(engine: Engine, job_id: str, stage: str | None = None, status: str | None = None,
               limit: str | None = None, continuation: str | None = None) -> Response:
    """GET /api/jobs/{job_id}/tasks (read links beside the blob URLs of their results, minted now)."""
    engine_jobs.require_job(engine.store, job_id)
    body = task_page(engine, job_id, stage, status, limit, continuation).model_dump(mode="json")
    return 200, {**body, "tasks": engine_links.sign_tasks(engine.io.rasters, body["tasks"])}


def get_task(engine: Engine, job_id: str, task_id: str, full: str | None = None) -> Response:
    """GET /api/jobs/{job_id}/tasks/{task_id}: status, attempts, timings, error, parameters, result (read
    links beside its blob URLs, minted now); ``?full=true``: its cut texts whole (``cut`` lists them)."""
    whole = flag(full, "full")
    engine_jobs.require_job(engine.store, job_id)
    try:
        prefix, stage, index = parse_task_id(task_id)
    except Exception:
        raise NotFoundError(f"no task {echo(task_id)} in job {job_id}") from None
    task = engine.store.get_task(job_id, stage, index) if job_id.startswith(prefix) else None
    if task is None:
        raise NotFoundError(f"no task {echo(task_id)} in job {job_id}")
    if whole:
        task = engine.store.whole_texts(task)
    (view,) = engine_links.sign_tasks(engine.io.rasters, [task_view(task).model_dump(mode="json")])
    return 200, view


def stuck_jobs(engine: Engine, base_url: str, older_than_s: str | None = None) -> Response:
    """GET /api/jobs/stuck: processing jobs whose tasks made no progress for ``older_than_s`` seconds."""
    threshold = number(older_than_s, "older_than_s", 600.0, 0, 10 * 365 * 86400)
    now, found, token = utcnow(), [], None
    while True:
        rows, token = engine.store.list_jobs(Status.PROCESSING, None, MAX_LIMIT, token)
        for row in rows:
            last = engine.store.last_progress(row["job_id"]) or row["updated_at"]
            idle = (now - last).total_seconds()
            if idle >= threshold:
                found.append(JobSummary(status_url=f"{base_url}/api/jobs/status/{row['job_id']}", idle_s=round(idle, 1),
                                        **{k: row[k] for k in JobSummary.model_fields if k in row}))
        if token is None:
            break
    return 200, {"older_than_s": threshold, **JobPage(jobs=found).model_dump(mode="json")}


def job_types() -> Response:
    """GET /api/job-types: every registered type, its stages and its parameters as JSON Schema."""
    types = [JobTypeInfo(job_type=c.job_type, description=c.description,
                         stages=[StageInfo(stage=i, name=s.name, task_type=s.task_type,
                                           task_version=engine_jobs.handler(s.task_type).version,
                                           time_limit_s=engine_jobs.handler(s.task_type).time_limit_s
                                           or get_settings().task_time_limit_s,
                                           parallelism=s.parallelism, description=s.description)
                                 for i, s in enumerate(c.stages, start=1)],
                         parameters=c.parameters_model.model_json_schema(),
                         tolerated_failure_fraction=c.tolerated_failure_fraction)
             for c in sorted(engine_jobs.job_types().values(), key=lambda c: c.job_type)]
    return 200, JobTypes(job_types=types).model_dump(mode="json")


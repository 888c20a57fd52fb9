"""Status benchmark: ``GET /api/jobs/status`` of a 100,000-task job on an idle Azurite, against the same call
when the job has no task rows yet (the baseline, same process, same Azurite).

Starts its own Azurite, submits ``noop`` with ``--n`` tasks, plans the stage and writes its counter rows, times
the status calls (``api_jobs.status`` in this process: the job row's point read and the stage and counter rows'
range query), then writes all ``--n`` task rows (rows only, no messages) and times the same calls again. The
issue's goal: ≤ 100 ms and ≤ 3 storage requests on an idle host. Prints a Markdown table and writes the JSON to
``benchmarks/results/bench_status-<UTC date>.json``.

    .venv/bin/python benchmarks/bench_status.py [--n 100000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_common  # noqa: F401 - puts the repository root and tests/ on sys.path
from azurite_proc import Azurite
from bench_common import RESULTS, progress_log
import bench_requests
from bench_requests import TALLY, by_service, diff
from support import fresh_settings

import api_jobs
import engine_fanout
from controller_factory import get_controller
from models import TaskRecord, make_task_id
from repositories import Repositories
from task_manager import Engine

log = progress_log("bench_status")
CALLS = 20


def timed(call, calls: int = CALLS) -> dict[str, Any]:
    """Median and max milliseconds of ``calls`` calls, and the storage requests of one."""
    times = []
    for _ in range(calls):
        before = TALLY.snapshot()
        started = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - started))
        used = by_service(diff(TALLY.snapshot(), before))["all"]
    return {"p50_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1), "requests": used}


def measure(n: int) -> dict[str, Any]:
    """Status of an ``n``-task noop job before and after its task rows exist."""
    bench_requests.install()
    azurite = Azurite(Path(tempfile.mkdtemp(prefix="bench_status-"))).start()
    TALLY.add_endpoints(azurite.connection_string)
    try:
        engine = Engine(Repositories(fresh_settings(azurite.connection_string)).ensure())
        code, body = api_jobs.submit(engine, "noop", json.dumps({"n": n}).encode(), "http://bench")
        if code != 202:
            raise RuntimeError(f"submit answered {code}: {body}")
        job = engine.store.get_job(body["job_id"])
        controller = get_controller("noop")
        planned = engine_fanout.plan(engine.context, job, controller, 1)
        stage, planned = engine_fanout.new_stage(engine.context, job, controller, 1, planned)
        status = lambda: api_jobs.status(engine, job.job_id)  # noqa: E731
        empty = {"status": timed(status), "stage_rows": timed(lambda: engine.store.stage_rows(job.job_id))}
        log(f"no task rows: status p50 {empty['status']['p50_ms']} ms; writing {n:,} task rows")
        tasks = [TaskRecord(job_id=job.job_id, task_id=make_task_id(job.job_id, 1, i), stage=1, index=i,
                            shard=i % stage.shards, task_type=stage.task_type, task_version=1, parameters=planned[i])
                 for i in range(n)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(engine.store.create_tasks, [tasks[i:i + 2000] for i in range(0, n, 2000)]))
        full = {"status": timed(status), "stage_rows": timed(lambda: engine.store.stage_rows(job.job_id)),
                "job_row": timed(lambda: engine.store.get_job(job.job_id))}
        log(f"{n:,} task rows: status p50 {full['status']['p50_ms']} ms")
        return {"tasks": n, "shards": stage.shards, "no_task_rows": empty, "all_task_rows": full,
                "ratio_p50": round(full["status"]["p50_ms"] / empty["status"]["p50_ms"], 2)}
    finally:
        azurite.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="tasks of the job")
    args = parser.parse_args()
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), **measure(args.n)}
    s, e = result["all_task_rows"], result["no_task_rows"]
    print(f"| status of a {args.n:,}-task job, idle Azurite | p50 ms | max ms | storage requests |\n|---|---:|---:|---:|\n"
          f"| no task rows yet (baseline) | {e['status']['p50_ms']} | {e['status']['max_ms']} | {e['status']['requests']} |\n"
          f"| all {args.n:,} task rows | {s['status']['p50_ms']} | {s['status']['max_ms']} | {s['status']['requests']} |\n"
          f"| of which the stage and counter rows' range query | {s['stage_rows']['p50_ms']} | "
          f"{s['stage_rows']['max_ms']} | {s['stage_rows']['requests']} |\n\n"
          f"ratio (all rows ÷ none) {result['ratio_p50']}; goal ≤ 100 ms and ≤ 3 requests: "
          f"{'met' if s['status']['p50_ms'] <= 100 and s['status']['requests'] <= 3 else 'NOT met'}")
    print(json.dumps(result, indent=1))
    out = RESULTS / f"bench_status-{result['date'][:10]}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out.relative_to(RESULTS.parents[1])}")


if __name__ == "__main__":
    main()

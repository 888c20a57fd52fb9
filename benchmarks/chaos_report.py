"""Fault x outcome table for the engine (issue 3's report). Not a test: it prints and saves numbers.

For every named fault point: ``raise`` (an exception escapes there, in-process, messages delivered as
the host would, sweeper run when idle) and ``kill`` (two real local hosts, each SIGKILLs itself the
first time it reaches the point, replaced by clean hosts; sweeper every 2 s with 3 s grace), each
``--runs`` times on hello_world n=50. Also times the sweeper's recovery of a lost advance: from the
kill at ``stage_decided`` to the sweeper's re-drive of stage 2.

    .venv/bin/python benchmarks/chaos_report.py --runs 20
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import engine_faults  # noqa: E402
import api_jobs  # noqa: E402
from azurite_proc import Azurite  # noqa: E402
from conftest import fresh_settings  # noqa: E402
from models import Status  # noqa: E402
from queue_driver import QueueDriver  # noqa: E402
from repositories import Repositories  # noqa: E402
from task_manager import Engine  # noqa: E402
from test_chaos_processes import expected, run_with_kills  # noqa: E402

KILL_POINTS = [p for p in engine_faults.POINTS if p != "job_row_written"]  # a killed submit is the client's retry
_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def raise_run(azurite: Azurite, point: str, n: int) -> str:
    """One in-process run with an exception at ``point``; returns the outcome."""
    engine = Engine(Repositories(fresh_settings(azurite.connection_string, retry_base_delay_s=0,
                                                sweeper_grace_s=0, task_time_limit_s=2)).ensure())
    engine_faults.arm(point, "raise", times=1)
    params = {"n": n, "message": f"raise-{point}"}
    body = json.dumps(params).encode()
    try:
        job_id = api_jobs.submit(engine, "hello_world", body, "http://r")[1]["job_id"]
    except engine_faults.InjectedFault:
        job_id = api_jobs.submit(engine, "hello_world", body, "http://r")[1]["job_id"]
    driver = QueueDriver(engine, sweep=True)
    try:
        driver.run(job_id, timeout=120)
    except AssertionError:
        return "stuck"
    finally:
        engine_faults.disarm()
    job = engine.store.get_job(job_id)
    kinds = Counter((m["kind"], m.get("stage")) for m in map(json.loads, driver.job_bodies))
    if any(v > 1 for v in kinds.values()):
        return "double advance"
    if job.status == Status.COMPLETED and job.result_data == expected(job_id, n, params["message"]):
        return "completed"
    return "failed" if job.status == Status.FAILED else "stuck"


def recovery_seconds(tmp: Path) -> list[float]:
    """Per run folder: seconds from the killed finisher's last stage-1 task end to the sweeper's
    re-drive of the advance (read from that run's host logs)."""
    found = []
    for run in sorted(p for p in tmp.glob("stage_decided-*") if p.is_dir()):
        died = redrive = None
        for log in sorted(run.glob("host*.log")):
            for line in log.read_text(errors="replace").splitlines():
                m = _TIME.match(line)
                if not m:
                    continue
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if '"event":"task_ended"' in line and '"stage":1,' in line:
                    died = max(died or t, t)
                if '"event":"sweeper_redrive"' in line and "resent_advance" in line:
                    redrive = t if redrive is None else min(redrive, t)
        if died is not None and redrive is not None:
            found.append(round(redrive - died, 2))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--modes", default="raise,kill")
    ap.add_argument("--points", default=",".join(engine_faults.POINTS), help="comma-separated fault points")
    args = ap.parse_args()
    modes = args.modes.split(",")
    table: dict[tuple[str, str], Counter] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmpdir:
        tmp = Path(tmpdir)
        azurite = Azurite(location=tmp / "azurite").start()
        try:
            for point in args.points.split(","):
                for mode in modes:
                    if mode == "kill" and point not in KILL_POINTS:
                        continue
                    key = (point, mode)
                    table[key], seconds[key] = Counter(), []
                    for run in range(args.runs):
                        t0 = time.monotonic()
                        if mode == "raise":
                            outcome = raise_run(azurite, point, args.n)
                        else:
                            outcome = run_with_kills(azurite, tmp / f"{point}-{run}", point, "kill", args.n)["outcome"]
                        table[key][outcome] += 1
                        seconds[key].append(time.monotonic() - t0)
                    print(f"{point:24s} {mode:6s} {dict(table[key])} "
                          f"mean {sum(seconds[key]) / len(seconds[key]):.1f}s", flush=True)
            recovery = recovery_seconds(tmp) if "kill" in modes else []
        finally:
            azurite.stop()
    outcomes = ["completed", "failed", "stuck", "double advance"]
    print("\n| fault point | mode | runs | " + " | ".join(outcomes) + " | mean s |")
    print("|---|---|---|" + "---|" * len(outcomes) + "---|")
    for (point, mode), counts in table.items():
        cells = " | ".join(str(counts.get(o, 0)) for o in outcomes)
        mean = sum(seconds[(point, mode)]) / len(seconds[(point, mode)])
        print(f"| {point} | {mode} | {sum(counts.values())} | {cells} | {mean:.1f} |")
    if recovery:
        recovery.sort()
        print(f"\nsweeper recovery of a lost advance (kill at stage_decided; sweeper every 2 s, grace 3 s): "
              f"median {recovery[len(recovery) // 2]:.1f} s, max {recovery[-1]:.1f} s over {len(recovery)} runs")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y-%m-%d")
    (out / f"chaos_report-{stamp}.json").write_text(json.dumps({
        "date": stamp, "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "runs": args.runs, "n": args.n,
        "table": [{"point": p, "mode": m, **c} for (p, m), c in table.items()],
        "recovery_s": recovery}, indent=2))


if __name__ == "__main__":
    main()

"""Fault x outcome table for the engine (issue 3's report). Not a test: it prints and saves numbers.

For every named fault point: ``raise`` (an exception escapes there, in-process, messages delivered as
the host would, sweeper run when idle) and ``kill`` (two real local hosts, each SIGKILLs itself the
first time it reaches the point, replaced by clean hosts; sweeper every 2 s with 3 s grace), each
``--runs`` times on hello_world n=50. Also times the sweeper's recovery of a lost advance: from the
kill at ``stage_decided`` to the sweeper's re-drive of stage 2.

Mode ``transport`` (issue 10): per lost-reply rate p in ``--rates``, hello_world ``--n`` on two real hosts
whose every storage request loses its reply after being applied with probability p and fails before it
with probability p (``GEOETL_TRANSPORT_FAULTS="lose=p,fail=p,seed=S"``), alone and combined with a
kill -9 at one engine fault point per run (walking ``engine_faults.POINTS``, ``point=kill#1``, dead hosts
replaced). Outcomes as tests/test_chaos_transport.py judges them (exact = completed with the exact
result, one advance per stage, every queue drained); the seed of every run that did not end exact.
Saved as ``benchmarks/results/chaos_report-transport-<date>.json`` / ``.txt`` (the .txt holds the table).

    .venv/bin/python benchmarks/chaos_report.py --runs 20
    .venv/bin/python benchmarks/chaos_report.py --modes transport --runs 20 --rates 0.01,0.05
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from bench_common import ROOT  # importing it puts the repository root and tests/ on sys.path

import engine_faults  # noqa: E402
import api_jobs  # noqa: E402
from azurite_proc import Azurite  # noqa: E402
from support import expected_hello, fresh_settings  # noqa: E402
from models import Status  # noqa: E402
from queue_driver import QueueDriver  # noqa: E402
from repositories import Repositories  # noqa: E402
from task_manager import Engine  # noqa: E402
from chaos_cluster import Outcome, hello_job, run_transport, run_with_kills  # noqa: E402

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
    if job.status == Status.COMPLETED and job.result_data == expected_hello(job_id, n, params["message"]):
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


def transport_row(azurite: Azurite, tmp: Path, rate: float, kills: bool, runs: int, n: int,
                  seed0: int, say=print) -> list[Outcome]:
    """``runs`` hello_world jobs at lost-reply rate ``rate`` (and fail ``rate``), with a kill per run or not."""
    found = []
    for run in range(runs):
        seed = seed0 + run
        kill = f"{engine_faults.POINTS[run % len(engine_faults.POINTS)]}=kill#1" if kills else None
        try:
            result = run_transport(azurite, tmp / f"transport-{rate}-{'kill' if kills else 'none'}-{seed}", seed,
                                   lose=rate, fail=rate, spec=hello_job(n, f"chaos-{seed}"), kill=kill, timeout=300)
        except Exception as exc:  # noqa: BLE001 - e.g. a host that cannot start: counted, not fatal
            result = Outcome(seed=seed, kill=kill, outcome="harness error", error=f"{type(exc).__name__}: {exc}"[:500])
        found.append(result)
        say(f"  lose={rate:.0%} seed={seed} {kill or 'no kill':32s} {result.outcome:18s} "
              f"{result.seconds}s stage msgs {result.stage_messages} dup task msgs {result.ignored} "
              f"redrives {result.redrives} faults {sum(result.injected.values())}")
    return found


def transport_report(azurite: Azurite, tmp: Path, args) -> bool:
    """The transport-fault table: print it, save the runs (.json) and the printed text (.txt); True
    when every run ended exact."""
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    rows: list[dict] = []
    started = time.monotonic()
    for r, rate in enumerate(float(x) for x in args.rates.split(",")):
        for kills in (False, True):
            seed0 = 10_000 * (r + 1) + (5_000 if kills else 0)
            outcomes = transport_row(azurite, tmp, rate, kills, args.runs, args.n, seed0, say)
            rows.append({"lose": rate, "fail": rate, "kills": kills, "runs": [vars(o) for o in outcomes]})
    say(f"\nhello_world n={args.n}, 2 hosts, sweeper every 2 s (grace 3 s), {args.runs} runs per row, "
        f"{time.monotonic() - started:.0f} s in all; fail = lost-reply rate (503 and refused halves); "
        "kills walk engine_faults.POINTS (point=kill#1 on both first hosts)\n")
    say("| lost replies | + failures | kills | runs | completed exact | failed | stuck | double advance | other "
        "| median s | max s | dup task msgs (mean) | sweeper re-drives (mean) | not exact (seed: outcome) |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        runs = row["runs"]
        counts = Counter(o["outcome"] for o in runs)
        other = sum(v for k, v in counts.items() if k not in ("completed", "failed", "stuck", "double advance"))
        times = sorted(o["seconds"] for o in runs if o["status"] == "completed" and o["seconds"] is not None)
        median = f"{times[len(times) // 2]:.1f}" if times else "-"
        worst = f"{times[-1]:.1f}" if times else "-"
        dups = sum(o["ignored"] for o in runs) / len(runs)
        redrives = sum(o["redrives"] for o in runs) / len(runs)
        bad = "; ".join(f"{o['seed']}: {o['outcome']}" + (f" ({o['kill'].split('=')[0]})" if o["kill"] else "")
                        for o in runs if o["outcome"] != "completed") or "-"
        say(f"| {row['lose']:.0%} | {row['fail']:.0%} | {'one per run' if row['kills'] else 'none'} | {len(runs)} "
            f"| {counts['completed']} | {counts['failed']} | {counts['stuck']} | {counts['double advance']} "
            f"| {other} | {median} | {worst} | {dups:.0f} | {redrives:.1f} | {bad} |")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y-%m-%d")
    (out / f"chaos_report-transport-{stamp}.json").write_text(json.dumps({
        "date": stamp, "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                                   "loadavg_at_end": os.getloadavg()},
        "runs_per_row": args.runs, "n": args.n, "rows": rows}, indent=2, default=str))
    (out / f"chaos_report-transport-{stamp}.txt").write_text("\n".join(lines) + "\n")
    return all(o["outcome"] == "completed" for row in rows for o in row["runs"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--modes", default="raise,kill", help="raise,kill (fault points) or transport")
    ap.add_argument("--points", default=",".join(engine_faults.POINTS), help="comma-separated fault points")
    ap.add_argument("--rates", default="0.01,0.05", help="transport mode: lost-reply rates (failures the same)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if "transport" in modes:  # host logs are kept when a run did not end exact (their folder is printed)
        tmp = Path(tempfile.mkdtemp(prefix="chaos-transport-"))
        azurite = Azurite(location=tmp / "azurite").start()
        try:
            exact = transport_report(azurite, tmp, args)
        finally:
            azurite.stop()
            shutil.rmtree(tmp / "azurite", ignore_errors=True)
        if exact:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"host logs of every run kept in {tmp}")
        modes.remove("transport")
        if not modes:
            return
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

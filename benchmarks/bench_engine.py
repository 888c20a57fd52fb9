"""Engine benchmark: storage requests per task, fan-out and end-to-end speed as ratios to the raw queue.

Starts its own Azurite (private ports, temporary data folder; stopped by PID at the end, even on
error or SIGTERM) and measures, in one run, every ratio against a baseline taken on the same Azurite:

1. raw        The queue's own rate: send N messages (8 threads), then receive (batch 16) + delete them
              (8 threads); measured before and after the engine runs, the mean is the baseline.
2. requests   hello_world at n = 10, 100, 1,000 (2n tasks) on 2 local host processes whose every storage
              request is counted at the transport (``bench_requests``): table, queue, blob and all
              requests per task, by kind, from the submit to the job's end. The largest n is also the
              end-to-end run: tasks/s ÷ the raw send+receive+delete rate.
3. fanout     ``engine.run_stage`` of hello_world stage 1 (n tasks: counters, rows and sends overlapped),
              in this process, against the same number of raw sends with FANOUT_THREADS threads;
              interleaved repeats, medians.
4. scale      (``--scale``) noop with 100,000 tasks on 2 hosts: fan-out time, status latency and
              requests per call and sweeper passes (in this process) while it runs, the whole run;
              then an end-to-end noop run of 20,000 tasks.

It is not a test and asserts nothing. It prints Markdown tables (goals from issue 11 side by side)
and the JSON, which it writes to ``benchmarks/results/bench_engine-<UTC date>[-scale].json``.

    .venv/bin/python benchmarks/bench_engine.py [--scale] [--only raw,requests,fanout,scale]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench_common
import bench_requests
from azurite_proc import Azurite
from bench_common import machine_facts, progress_log, run_benchmark
from bench_engine_report import markdown
from bench_hosts import drop_storage, run_job_on_hosts
from bench_requests import TALLY, by_service, diff
from support import fresh_settings

import api_jobs
import engine_fanout
from config import load_host_json
from local_host_queues import QueueOptions
from models import TaskMessage, decode_job_message, make_job_id, make_task_id
from repositories import Repositories
from task_manager import Engine

log = progress_log("bench_engine")
SECTIONS = ("raw", "requests", "fanout", "scale")
LEASE_SECONDS = 30


@dataclass(frozen=True)
class Profile:
    """Sizes of one run."""

    request_ns: tuple[int, ...] = (10, 100, 1000)
    hosts: int = 2
    raw_messages: int = 2000
    raw_threads: int = 8
    fanout_n: int = 1000
    fanout_repeats: int = 3
    scale_n: int = 100_000
    scale_e2e_n: int = 20_000
    status_every_s: float = 5.0
    sweep_every_s: float = 30.0


# Azurite's receive costs grow with the queue's length (about 140 receive+delete/s behind 1,000 messages,
# 53/s behind 3,000, 8/s behind 8,000 on this machine), so the scale runs keep the backlog short, as
# local.settings.json.example does for every Azurite run; Azure's defaults are in config.py.
AZURITE_FANOUT = {"fanout_chunk": 500, "fanout_max_backlog": 1000, "fanout_pause_s": 2}


# ---------------------------------------------------------------------------------------------- storage
def new_repos(conn: str, **overrides: Any) -> Repositories:
    """Repositories over tables, queues and a container of their own, created before anything is measured."""
    return Repositories(fresh_settings(conn, **overrides)).ensure()


def counted(call: Callable[[], Any]) -> tuple[Any, float, dict[str, int]]:
    """(result, seconds, requests by kind) of one call in this process."""
    before = TALLY.snapshot()
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started, diff(TALLY.snapshot(), before)


# ---------------------------------------------------------------------------------------------- 1. raw queue
def _drain(client: Any, batch: int) -> int:
    """Receive ``batch`` at a time and delete each until an empty receive; messages handled."""
    handled = 0
    while True:
        page = list(next(client.receive_messages(messages_per_page=batch, max_messages=batch,
                                                 visibility_timeout=LEASE_SECONDS).by_page(), []))
        if not page:
            return handled
        for message in page:
            client.delete_message(message)
        handled += len(page)


def task_messages(n: int) -> list[TaskMessage]:
    """n task messages like the engine's (ids only)."""
    job_id = make_job_id("hello_world", {"n": n})
    return [TaskMessage(job_id=job_id, task_id=make_task_id(job_id, 1, i)) for i in range(n)]


def measure_raw_queue(conn: str, messages: int, threads: int, batch: int) -> dict[str, Any]:
    """Send ``messages`` with ``threads``, then receive (``batch``) + delete them with ``threads``."""
    repos = new_repos(conn, fanout_threads=threads)
    queue = repos.tasks_queue
    _, send_s, sent = counted(lambda: queue.send_many(task_messages(messages)))

    def drain() -> int:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return sum(pool.map(lambda _: _drain(queue.client, batch), range(threads)))
    handled, receive_s, received = counted(drain)
    drop_storage(repos)
    return {"messages": messages, "threads": threads, "receive_batch": batch, "handled": handled,
            "send_s": round(send_s, 2), "receive_delete_s": round(receive_s, 2),
            "send_per_s": round(messages / send_s, 1), "receive_delete_per_s": round(messages / receive_s, 1),
            "send_receive_delete_per_s": round(messages / (send_s + receive_s), 1),
            "requests_per_message": round(by_service(bench_requests.add(sent, received))["all"] / messages, 3)}


def measure_raw_sends(conn: str, n: int, threads: int) -> dict[str, Any]:
    """n task messages sent with ``threads`` threads (the repository's ``send_many``)."""
    repos = new_repos(conn, fanout_threads=threads)
    _, seconds, _ = counted(lambda: repos.tasks_queue.send_many(task_messages(n)))
    drop_storage(repos)
    return {"messages": n, "threads": threads, "seconds": round(seconds, 3), "sends_per_s": round(n / seconds, 1)}


# ---------------------------------------------------------------------------------------------- 3. fan-out
def measure_fanout(conn: str, n: int) -> dict[str, Any]:
    """Time ``engine.run_stage`` of hello_world stage 1 (n tasks) in this process; its requests by kind."""
    engine = Engine(new_repos(conn))
    code, body = api_jobs.submit(engine, "hello_world", json.dumps({"n": n}).encode(), "http://bench")
    if code != 202:
        raise RuntimeError(f"submit answered {code}: {body}")
    received = engine.repos.jobs_queue.client.receive_message(visibility_timeout=LEASE_SECONDS)
    message = decode_job_message(received.content)
    chunk_s: list[float] = []
    real = engine_fanout.fan_out_chunk

    def timed_chunk(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            real(*args, **kwargs)
        finally:
            chunk_s.append(time.perf_counter() - started)
    engine_fanout.fan_out_chunk = timed_chunk
    try:
        _, seconds, used = counted(lambda: engine.run_stage(message))
    finally:
        engine_fanout.fan_out_chunk = real
    queued = engine.repos.tasks_queue.client.get_queue_properties().approximate_message_count
    threads = engine.settings.fanout_threads
    drop_storage(engine.repos)
    return {"tasks": n, "fanout_threads": threads, "seconds": round(seconds, 3),
            "rows_and_sends_s": round(sum(chunk_s), 3), "setup_s": round(seconds - sum(chunk_s), 3),
            "workers_used": min(threads, -(-n // 100)), "requests": used, "messages_queued": queued}


def fanout_section(conn: str, profile: Profile) -> dict[str, Any]:
    """Fan-out runs and raw-send runs interleaved (order alternating); medians and their ratio."""
    threads = Repositories(fresh_settings(conn)).settings.fanout_threads
    fanouts, raws = [], []
    for repeat in range(profile.fanout_repeats):
        log(f"fan-out n={profile.fanout_n} vs raw sends ({threads} threads), run {repeat + 1}/{profile.fanout_repeats}")
        steps = [lambda: fanouts.append(measure_fanout(conn, profile.fanout_n)),
                 lambda: raws.append(measure_raw_sends(conn, profile.fanout_n, threads))]
        for step in (steps if repeat % 2 == 0 else steps[::-1]):
            step()
    fanout = sorted(fanouts, key=lambda r: r["seconds"])[len(fanouts) // 2]
    raw_s = statistics.median(r["seconds"] for r in raws)
    return {"fanout": {**fanout, "runs_s": [r["seconds"] for r in fanouts]},
            "raw_sends": {"messages": profile.fanout_n, "threads": threads, "seconds": round(raw_s, 3),
                          "runs_s": [r["seconds"] for r in raws]},
            "ratio": round(fanout["seconds"] / raw_s, 3)}


# ---------------------------------------------------------------------------------------------- 4. scale
@dataclass
class ScaleSampler:
    """While a job runs: a status call every ``status_every_s`` and a sweeper pass every ``sweep_every_s``,
    each timed and its storage requests counted (in this process, over the hosts' storage)."""

    status_every_s: float
    sweep_every_s: float

    def __post_init__(self) -> None:
        self.status: list[dict[str, Any]] = []
        self.sweeps: list[dict[str, Any]] = []
        self._next_status, self._next_sweep = 2.0, self.sweep_every_s / 2

    def __call__(self, engine: Engine, job_id: str, elapsed: float) -> None:
        """Sample if due."""

        if elapsed >= self._next_status:
            self._next_status = elapsed + self.status_every_s
            (_, body), seconds, used = counted(lambda: api_jobs.status(engine, job_id))
            self.status.append({"t_s": round(elapsed, 1), "ms": round(1000 * seconds, 1),
                                "requests": by_service(used)["all"], "completed": body["tasks"]["completed"],
                                "status": body["status"]})
        if elapsed >= self._next_sweep:
            self._next_sweep = elapsed + self.sweep_every_s
            actions, seconds, used = counted(lambda: engine.sweep())
            self.sweeps.append({"t_s": round(elapsed, 1), "ms": round(1000 * seconds, 1), "requests": used,
                                "requests_all": by_service(used)["all"], "actions": actions})

    def summary(self) -> dict[str, Any]:
        """Distributions of the samples, and the samples."""
        return {"status_ms": bench_common.stats_ms([s["ms"] for s in self.status]),
                "status_requests_max": max((s["requests"] for s in self.status), default=None),
                "sweep_ms": bench_common.stats_ms([s["ms"] for s in self.sweeps]),
                "sweep_requests_max": max((s["requests_all"] for s in self.sweeps), default=None),
                "status_samples": self.status, "sweeps": self.sweeps}


def scale_section(conn: str, profile: Profile, workdir: Path) -> dict[str, Any]:
    """noop of ``scale_n`` tasks with status and sweeper samples, then noop of ``scale_e2e_n`` end to end."""
    sampler = ScaleSampler(profile.status_every_s, profile.sweep_every_s)
    n = profile.scale_n
    log(f"scale: noop n={n} on {profile.hosts} hosts (status every {profile.status_every_s} s, "
        f"sweeper every {profile.sweep_every_s} s)")
    stage = run_job_on_hosts(conn, "noop", {"n": n}, n, profile.hosts, workdir, "scale", timeout=max(900, n * 0.2),
                             stall_s=300, sampler=sampler, log=log, settings=AZURITE_FANOUT)
    marks = {t["event"]: t for t in stage["timeline"]}
    dispatched = marks.get("stage_dispatched stage 1", {}).get("first_s")
    stage["fanout_s"] = dispatched
    stage["fanout_sends_per_s"] = round(n / dispatched, 1) if dispatched else None
    stage["samples"] = sampler.summary()
    n = profile.scale_e2e_n
    log(f"scale: end to end noop n={n}")
    e2e = run_job_on_hosts(conn, "noop", {"n": n}, n, profile.hosts, workdir, "scale-e2e", timeout=max(600, n * 0.2),
                           log=log, settings=AZURITE_FANOUT)
    return {"stage": stage, "e2e": e2e}


# ---------------------------------------------------------------------------------------------- run
def run_section(summary: dict[str, Any], name: str, measure: Callable[[], Any]) -> None:
    """Run one section into ``summary[name]``; a failure is recorded (and printed) and the others still run."""
    started = time.perf_counter()
    try:
        summary[name] = measure()
    except Exception as exc:  # noqa: BLE001 - report it, go on with the next section
        log(f"section {name} failed:\n{traceback.format_exc()}")
        summary[name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        log(f"section {name} took {time.perf_counter() - started:.1f} s")


def measure(profile: Profile, sections: set[str], workdir: Path) -> dict[str, Any]:
    """Start Azurite, run the chosen sections, stop Azurite (by PID, whatever happens); the summary."""
    summary: dict[str, Any] = {"machine": machine_facts(("azure-data-tables", "azure-storage-queue", "azure-core",
                                                         "azure-functions"), sections=sorted(sections)),
                               "profile": asdict(profile)}
    bench_requests.install()
    azurite = Azurite(location=workdir / "azurite").start()
    log(f"Azurite pid {azurite.process.pid} on ports {azurite.blob_port}/{azurite.queue_port}/{azurite.table_port}")
    conn = azurite.connection_string
    TALLY.add_endpoints(conn)
    batch = QueueOptions.from_host_config(load_host_json()).batch_size
    raw_runs: list[dict[str, Any]] = []

    def raw() -> list[dict[str, Any]]:
        log(f"raw queue: {profile.raw_messages} messages, {profile.raw_threads} threads")
        raw_runs.append(measure_raw_queue(conn, profile.raw_messages, profile.raw_threads, batch))
        return raw_runs

    def requests_runs() -> list[dict[str, Any]]:
        runs = []
        for i, n in enumerate(profile.request_ns):
            log(f"requests: hello_world n={n} ({2 * n} tasks) on {profile.hosts} hosts")
            runs.append(run_job_on_hosts(conn, "hello_world", {"n": n}, 2 * n, profile.hosts, workdir,
                                         f"hello{n}-{i}", timeout=max(300, 2 * n * 0.5), log=log))
            log(f"requests: n={n}: {runs[-1]['status']} in {runs[-1]['seconds']} s, {runs[-1]['per_task']}")
        return runs

    try:
        if "raw" in sections:
            run_section(summary, "raw", raw)
        if "requests" in sections:
            run_section(summary, "requests", requests_runs)
        if "raw" in sections:
            run_section(summary, "raw", raw)
        if "fanout" in sections:
            run_section(summary, "fanout", lambda: fanout_section(conn, profile))
        if "scale" in sections:
            run_section(summary, "scale", lambda: scale_section(conn, profile, workdir))
    finally:
        azurite.stop()
        log("Azurite stopped")
    summary["ratios"] = ratios(summary)
    return summary


def ratios(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, measured in this run."""
    out: dict[str, Any] = {}
    raw = [r for r in summary.get("raw", []) if isinstance(r, dict)] if isinstance(summary.get("raw"), list) else []
    raw_rate = round(statistics.fmean(r["send_receive_delete_per_s"] for r in raw), 1) if raw else None
    out["raw_send_receive_delete_per_s"] = raw_rate
    runs = summary.get("requests")
    if isinstance(runs, list) and runs:
        big = runs[-1]
        out.update(at_tasks=big["tasks"], table_per_task=big["per_task"]["table"],
                   all_per_task=big["per_task"]["all"], e2e_tasks_per_s=big["tasks_per_s"])
        if raw_rate:
            out["e2e_ratio"] = round(big["tasks_per_s"] / raw_rate, 3)
    fanout = summary.get("fanout")
    if isinstance(fanout, dict) and "ratio" in fanout:
        out["fanout_ratio"] = fanout["ratio"]
    scale = summary.get("scale")
    if isinstance(scale, dict) and "stage" in scale:
        out["status_idle_ms"] = scale["stage"]["status_idle"]["ms"].get("p50")
        out["status_requests"] = scale["stage"]["status_idle"]["requests_per_call"]
        out["scale_e2e_tasks_per_s"] = scale["e2e"]["tasks_per_s"]
        if raw_rate:
            out["scale_e2e_ratio"] = round(scale["e2e"]["tasks_per_s"] / raw_rate, 3)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", action="store_true", help="add the scale section (100,000 + 20,000 tasks)")
    parser.add_argument("--only", help=f"comma-separated sections ({', '.join(SECTIONS)}); default: all but scale, "
                                       "all with --scale")
    parser.add_argument("--ns", help="hello_world sizes of the requests section (default 10,100,1000)")
    parser.add_argument("--scale-n", type=int, default=Profile.scale_n, help="tasks of the scale stage")
    parser.add_argument("--scale-e2e-n", type=int, default=Profile.scale_e2e_n, help="tasks of the scale e2e run")
    parser.add_argument("--hosts", type=int, default=Profile.hosts, help="local host processes (default 2)")
    parser.add_argument("--workdir", type=Path, help="keep Azurite's data and the host logs here (default: a "
                                                     "temporary folder, removed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print Markdown and JSON; write the JSON file."""
    args = parse_args(argv)
    default = set(SECTIONS) if args.scale else set(SECTIONS) - {"scale"}
    sections = {s.strip() for s in args.only.split(",") if s.strip()} if args.only else default
    if unknown := sections - set(SECTIONS):
        raise SystemExit(f"unknown sections: {sorted(unknown)}")
    profile = Profile(request_ns=tuple(int(n) for n in args.ns.split(",")) if args.ns else Profile.request_ns,
                      hosts=args.hosts, scale_n=args.scale_n, scale_e2e_n=args.scale_e2e_n)
    return run_benchmark("bench_engine", lambda workdir: measure(profile, sections, workdir), markdown,
                         suffix=("-scale" if "scale" in sections else "") + ("-partial" if args.only or args.ns else ""),
                         workdir=args.workdir)


if __name__ == "__main__":
    sys.exit(main())

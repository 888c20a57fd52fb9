"""One job through real local host processes, with every storage request counted and the hosts' logs read.

``run_job_on_hosts`` starts ``hosts`` processes (``CountedHost``: ``bench_requests.py`` around
``local_host.main``, no timers, so no sweeper), submits the job over HTTP, follows the hosts' logs until
the job's ``job_finished`` event (nothing polls storage meanwhile, so the counts are the job's own),
and reads each host's request counts just before the submit and just after the end. The time is from
the submit to the ``job_finished`` log line. A job whose tasks stop moving is reported as stuck, with
the hosts' warnings and errors, instead of being waited for without end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_common
import bench_requests
import requests
from azure.core.exceptions import ResourceNotFoundError
from azurite_proc import wait_for_port
from bench_common import LogTail, log_event, stats_ms
from support import fresh_settings, settings_env
from host_proc import HostProcess

import api_jobs
from repositories import Repositories
from task_manager import Engine

ANOMALIES = ("task_claimed_elsewhere", "task_end_superseded", "task_message_ignored", "task_busy_deferred",
             "task_retry_scheduled", "task_crashed", "task_poisoned", "group_commit_recognised",
             "stage_chunk_ignored", "stage_already_dispatched", "stage_message_ignored", "completion_ignored",
             "task_progress_not_written", "sweeper_redrive")
TIMELINE = ("job_message", "stage_chunk_dispatched", "stage_dispatched", "task_started", "task_ended",
            "stage_advanced", "job_finished")
Sampler = Callable[[Engine, str, float], None]


@dataclass
class CountedHost(HostProcess):
    """A ``HostProcess`` running ``bench_requests.py`` instead of local_host.py, so its requests can be read."""

    requests_path: Path | None = None
    _seq: int = field(default=0, repr=False)

    def start(self) -> "CountedHost":
        """Start (no timers: no sweeper) and wait until HTTP answers."""
        self.requests_path = self.log_path.with_suffix(".requests.json")
        self.requests_path.unlink(missing_ok=True)
        cmd = [sys.executable, bench_requests.__file__, "--port", str(self.port), "--log-file", str(self.log_path),
               "--settings", "/nonexistent", "--no-timers"]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", bench_requests.REQUESTS_FILE: str(self.requests_path)}
        with open(self.log_path.with_suffix(".out"), "ab") as out:
            self.process = subprocess.Popen(cmd, cwd=bench_common.ROOT, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(self.port, timeout=60)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"local host did not start: {self.log_path.with_suffix('.out').read_text()[-3000:]}") from None
        return self

    def requests(self, timeout: float = 15.0) -> dict[str, dict[str, int]]:
        """The host's counts now: ``requests`` (all it sent, by kind) and ``engine`` (the app's REQUEST_COUNTER)."""
        self._seq += 1
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = json.loads(self.requests_path.read_text())
                if data["seq"] >= self._seq:
                    self._seq = data["seq"]
                    return {"requests": data["requests"], "engine": data["engine"]}
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        raise TimeoutError(f"host on port {self.port} did not report its request counts")


@dataclass
class HostWatch:
    """What one host's log says about one job, read as it grows."""

    tail: LogTail
    events: Counter[str] = field(default_factory=Counter)
    levels: Counter[str] = field(default_factory=Counter)
    marks: dict[str, list[float]] = field(default_factory=dict)  # "event stage" -> [first, last]
    invocations_ms: list[int] = field(default_factory=list)
    chunk_send_ms: list[int] = field(default_factory=list)
    finished_at: float | None = None
    last_event_at: float = 0.0

    def read(self, job_id: str) -> None:
        """Take in the lines written since the last read."""
        for stamp, level, _, text in self.tail.read():
            self.levels[level] += 1
            if text.startswith("Executed process_task_message (Succeeded, "):
                self.invocations_ms.append(int(text.split(", ", 1)[1].split(" ", 1)[0]))
                continue
            event = log_event(text)
            if event is None or event.get("job_id") != job_id:
                continue
            name = event["event"]
            self.events[name] += 1
            self.last_event_at = time.monotonic()
            if name in TIMELINE:
                key = f"{name} {event.get('kind')} {event.get('stage', '')}".strip() if name == "job_message" \
                    else f"{name} stage {event['stage']}" if "stage" in event else name
                first, last = self.marks.get(key, [stamp, stamp])
                self.marks[key] = [min(first, stamp), max(last, stamp)]
            if name in ("stage_chunk_dispatched", "stage_dispatched") and "send_ms" in event:
                self.chunk_send_ms.append(event["send_ms"])
            if name == "job_finished":
                self.finished_at = stamp


def log_excerpts(path: Path, since: float, limit: int = 5, context: int = 60) -> list[str]:
    """WARNING/ERROR lines of a host log from ``since`` (epoch s) on, each with the traceback that follows it;
    one per distinct last line (the exception), at most ``limit``."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        parsed = bench_common.parse_log_line(line)
        if parsed is None or parsed[0] < since - 1 or parsed[1] not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        follow = []
        for extra in lines[i + 1:i + 1 + context]:
            if bench_common.parse_log_line(extra) is not None:
                break
            follow.append(extra)
        key = follow[-1] if follow else parsed[3][:120]
        if key not in found:
            found[key] = "\n".join([line[:1000], *follow])
            if len(found) >= limit:
                break
    return list(found.values())


def idle_status(engine: Engine, job_id: str, calls: int = 10) -> dict[str, Any]:
    """``api_jobs.status`` in this process with the hosts stopped: time and storage requests per call."""
    times, used = [], []
    for _ in range(calls):
        before = bench_requests.TALLY.snapshot()
        started = time.perf_counter()
        api_jobs.status(engine, job_id)
        times.append(1000 * (time.perf_counter() - started))
        used.append(bench_requests.by_service(bench_requests.diff(bench_requests.TALLY.snapshot(), before)))
    return {"calls": calls, "ms": stats_ms(times), "requests_per_call": max(u["all"] for u in used),
            "requests_by_service": used[-1]}


def run_job_on_hosts(conn: str, job_type: str, params: dict[str, Any], tasks: int, hosts: int, workdir: Path,
                     label: str, timeout: float, stall_s: float = 120.0, sampler: Sampler | None = None,
                     log: Callable[[str], None] = print, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one job on ``hosts`` counted local hosts over fresh storage (``settings``: overrides for this
    process and the hosts); its time, requests and log summary."""
    repos = Repositories(fresh_settings(conn, **(settings or {}))).ensure()
    engine = Engine(repos)
    env = settings_env(repos.settings) | {name.upper(): str(value) for name, value in (settings or {}).items()}
    procs = [CountedHost(env, workdir / f"{label}-host{i}.log") for i in range(hosts)]
    watches: list[HostWatch] = []
    stuck = None
    try:
        for proc in procs:
            proc.start()
        for proc in procs:  # the first call builds each host's engine (tables, queues, container): not the job's
            requests.get(f"{proc.url}/jobs/status/{'0' * 64}", timeout=60)
        time.sleep(1.0)  # the pollers' first receives and queue checks
        watches = [HostWatch(LogTail(p.log_path)) for p in procs]
        for watch in watches:
            watch.tail.read()  # start-up lines are not the job's
        before = [p.requests() for p in procs]
        submitted_at, started = time.time(), time.monotonic()
        response = requests.post(f"{procs[0].url}/jobs/submit/{job_type}", json=params, timeout=60)
        if response.status_code != 202:
            raise RuntimeError(f"submit answered {response.status_code}: {response.text[:2000]}")
        job_id = response.json()["job_id"]
        log(f"{label}: {job_type} {params} submitted as {job_id} ({tasks} tasks)")
        while not any(w.finished_at for w in watches):
            time.sleep(0.2)
            for watch in watches:
                watch.read(job_id)
            now = time.monotonic()
            if sampler is not None:
                sampler(engine, job_id, now - started)
            moved = max([w.last_event_at for w in watches] + [started])
            if now - moved > stall_s or now - started > timeout:
                stuck = f"no event of the job for {now - moved:.0f} s ({now - started:.0f} s after submit)"
                log(f"{label}: STUCK: {stuck}")
                break
        time.sleep(0.5)  # the completion message's delete
        after = [p.requests() for p in procs]
        for watch in watches:
            watch.read(job_id)
    finally:
        for proc in procs:
            proc.stop()
    finished_at = min((w.finished_at for w in watches if w.finished_at), default=None)
    seconds = (finished_at - submitted_at) if finished_at else time.time() - submitted_at
    status = api_jobs.status(engine, job_id)[1]
    result = {"job_type": job_type, "params": params, "tasks": tasks, "hosts": hosts, "job_id": job_id,
              "status": status["status"] if not stuck else f"stuck: {stuck}", "task_counts": status["tasks"],
              "result_task_count_ok": (status.get("result_data") or {}).get("task_count") == tasks,
              "result_data": status.get("result_data") if tasks <= 100 else _short(status.get("result_data")),
              "seconds": round(seconds, 2), "tasks_per_s": round(tasks / seconds, 1),
              **_requests(before, after, tasks), **_logs(watches, procs, submitted_at),
              "status_idle": idle_status(engine, job_id)}
    drop_storage(repos)
    return result


def _short(value: Any) -> Any:
    return value if not isinstance(value, dict) else {k: v for k, v in value.items() if not isinstance(v, list)}


def _requests(before: list[dict], after: list[dict], tasks: int) -> dict[str, Any]:
    """Requests of the job, summed over the hosts: by kind, per task by service, engine vs delivery."""
    sent = bench_requests.add(*(bench_requests.diff(a["requests"], b["requests"]) for a, b in zip(after, before)))
    engine = bench_requests.add(*(bench_requests.diff(a["engine"], b["engine"]) for a, b in zip(after, before)))
    total = bench_requests.by_service(sent)
    return {"requests": sent, "requests_by_service": total,
            "per_task": {k: round(v / tasks, 3) for k, v in total.items()},
            "per_task_by_kind": {k: round(v / tasks, 3) for k, v in sent.items()},
            "engine_per_task": round(engine.get("total", 0) / tasks, 3),
            "delivery_per_task": round((total["all"] - engine.get("total", 0)) / tasks, 3)}


def _logs(watches: list[HostWatch], procs: list[CountedHost], submitted_at: float) -> dict[str, Any]:
    """Per-host task split, invocation times, anomalies; the job's timeline after submit; log excerpts."""
    started = [w.events["task_started"] for w in watches]
    per_host = [{"host": i, "tasks_started": s, "share": round(s / max(1, sum(started)), 3),
                 "invocation_ms": stats_ms(w.invocations_ms), "levels": dict(w.levels),
                 "anomalies": {k: w.events[k] for k in ANOMALIES if w.events[k]}}
                for i, (w, s) in enumerate(zip(watches, started))]
    marks: dict[str, list[float]] = {}
    for w in watches:
        for key, (first, last) in w.marks.items():
            old = marks.get(key, [first, last])
            marks[key] = [min(old[0], first), max(old[1], last)]
    timeline = sorted(({"event": key, "first_s": round(first - submitted_at, 2),
                        "last_s": round(last - submitted_at, 2)} for key, (first, last) in marks.items()),
                      key=lambda t: t["first_s"])
    anomalies = sum((Counter(h["anomalies"]) for h in per_host), Counter())
    troubled = any(h["levels"].get(x) for h in per_host for x in ("WARNING", "ERROR", "CRITICAL"))
    return {"per_host": per_host, "timeline": timeline, "anomalies": dict(anomalies),
            "chunk_send_ms": stats_ms([ms for w in watches for ms in w.chunk_send_ms]),
            "log_excerpts": [x for p in procs for x in log_excerpts(p.log_path, submitted_at)] if troubled else []}


def drop_storage(repos: Repositories) -> None:
    """Delete one measurement's tables, queues and container so the next starts on a small Azurite."""
    settings = repos.settings
    for table in (settings.jobs_table, settings.tasks_table, settings.schedules_table):
        with suppress(ResourceNotFoundError):
            repos.clients.tables.delete_table(table)
    for queue in repos.queues():
        with suppress(ResourceNotFoundError):
            queue.client.delete_queue()
    with suppress(ResourceNotFoundError):
        repos.clients.blobs.delete_container(settings.payload_container)

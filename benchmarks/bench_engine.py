"""Engine benchmark: storage requests per task, stage fan-out time, end-to-end throughput on 2 hosts.

Starts its own Azurite (private ports, temporary data folder; stopped by PID at the end, even on
error or SIGTERM) and measures, in one run:

1. requests   Storage requests per task for hello_world at several n (2n tasks per job), in process:
              a pump that behaves like the Functions host feeds function_app's queue functions.
              ``REQUEST_COUNTER`` snapshots around the whole job (submit included), by service.
2. fanout     Time of ``engine.run_stage`` for stage 1 of hello_world (rows in entity-group
              transactions, then one message per task sent in parallel) for several FANOUT_THREADS,
              split into row writes (``store.create_stage``) and message sends (``tasks_queue.send_many``).
3. e2e        hello_world through 2 local host processes, submitted over HTTP, timed to ``completed``;
              the raw queue rate (send, then receive + delete) on the same Azurite for comparison;
              how the tasks were split between the hosts, and where the time went (host log events).

It is not a test and asserts nothing about time. It prints Markdown tables and a JSON summary, and
writes the JSON to ``benchmarks/results/bench_engine-<date>[-quick].json``.

    .venv/bin/python benchmarks/bench_engine.py [--quick] [--only requests,fanout,e2e]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azurite_proc import Azurite
from conftest import fresh_settings, settings_env
from host_proc import HostProcess

import function_app
import api_jobs
from config import load_host_json
from errors import ConflictError
from local_host_queues import QueueOptions
from models import TERMINAL, TaskMessage, decode_job_message, make_job_id, make_task_id
from repositories import Repositories
from repository_clients import REQUEST_COUNTER
from task_manager import Engine

RESULTS = ROOT / "benchmarks" / "results"
SERVICES = ("table", "queue", "blob", "total")
ENGINE_LOGGERS = ("task_manager", "function_app", "api_jobs", "repositories")
LEASE_SECONDS = 30  # local_host's default lease (visibility timeout of a receive)
POLL_SECONDS = 0.5  # status polling interval of the end-to-end run


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run."""

    name: str
    request_ns: tuple[int, ...]
    fanout_n: int
    fanout_threads: tuple[int, ...]
    fanout_repeats: int
    e2e_n: int
    raw_messages: int
    raw_threads: int = 8
    hosts: int = 2


FULL = Profile("full", request_ns=(10, 100, 1000), fanout_n=1000, fanout_threads=(8, 16, 32), fanout_repeats=3,
               e2e_n=1000, raw_messages=2000)
QUICK = Profile("quick", request_ns=(10, 100), fanout_n=200, fanout_threads=(8, 16, 32), fanout_repeats=1,
                e2e_n=200, raw_messages=400)


def log(text: str) -> None:
    """Progress on stderr (stdout carries only the results)."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- plumbing
class EventLog(logging.Handler):
    """Collects the engine's JSON log events in this process: counts, and which jobs have finished."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.counts: Counter[str] = Counter()
        self._finished: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    @classmethod
    def install(cls) -> EventLog:
        """Attach to the root logger; engine loggers at INFO, only warnings printed (to stderr)."""
        handler = cls()
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(logging.WARNING)
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.addHandler(stream)
        for name in ENGINE_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
        return handler

    def emit(self, record: logging.LogRecord) -> None:
        """Count the event; signal its job when it is ``job_finished``."""
        message = record.getMessage()
        if not message.startswith('{"event"'):
            return
        with suppress(ValueError):
            event = json.loads(message)
            with self._lock:
                self.counts[event["event"]] += 1
            if event["event"] == "job_finished":
                self.finished(event.get("job_id", "")).set()

    def finished(self, job_id: str) -> threading.Event:
        """An event set once ``job_id`` has finished (completed or failed)."""
        with self._lock:
            return self._finished.setdefault(job_id, threading.Event())

    def snapshot(self) -> Counter[str]:
        """Event counts so far."""
        with self._lock:
            return Counter(self.counts)


@dataclass
class Probe:
    """Calls, time and ConflictErrors of one wrapped method."""

    calls: int = 0
    seconds: float = 0.0
    conflicts: int = 0
    conflicts_by: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {"calls": self.calls, "seconds": round(self.seconds, 3), "conflicts": self.conflicts,
                **({"conflicts_by": dict(self.conflicts_by)} if self.conflicts_by else {})}


def probe(obj: Any, name: str, kind: Callable[..., str] | None = None) -> Probe:
    """Wrap ``obj.<name>`` on this instance only (no engine code changes) to time calls and count conflicts.

    ``kind(*args, **kwargs)``, if given, names the kind of call, to count conflicts by kind.
    """
    original = getattr(obj, name)
    stats = Probe()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        conflict = False
        try:
            return original(*args, **kwargs)
        except ConflictError:
            conflict = True
            raise
        finally:
            with stats._lock:
                stats.calls += 1
                stats.conflicts += conflict
                stats.seconds += time.perf_counter() - started
                if conflict and kind is not None:
                    stats.conflicts_by[kind(*args, **kwargs)] += 1

    setattr(obj, name, wrapper)
    return stats


def requests_since(before: dict[str, int]) -> dict[str, int]:
    """Requests sent since a ``REQUEST_COUNTER.snapshot()``, by service and total."""
    after = REQUEST_COUNTER.snapshot()
    return {s: after.get(s, 0) - before.get(s, 0) for s in SERVICES}


def new_engine(connection_string: str, **overrides: Any) -> Engine:
    """An engine over tables, queues and a container of its own, created before anything is measured."""
    return Engine(Repositories(fresh_settings(connection_string, **overrides)).ensure())


def drop_storage(repos: Repositories) -> None:
    """Delete one measurement's tables, queues and container so the next starts on a small Azurite."""
    settings = repos.settings
    for table in (settings.jobs_table, settings.tasks_table):
        with suppress(ResourceNotFoundError):
            repos.clients.tables.delete_table(table)
    for queue in repos.queues():
        with suppress(ResourceNotFoundError):
            queue.client.delete_queue()
    with suppress(ResourceNotFoundError):
        repos.clients.blobs.delete_container(settings.payload_container)


def submit_in_process(engine: Engine, n: int) -> str:
    """Submit hello_world n through api_jobs (as the HTTP function does); the job id."""
    code, body = api_jobs.submit(engine, "hello_world", json.dumps({"n": n}).encode(), "http://bench")
    if code != 202:
        raise RuntimeError(f"submit answered {code}: {body}")
    return body["job_id"]


# ---------------------------------------------------------------------------------------------- 1. requests
@dataclass
class _Feed:
    """One queue trigger as the host runs it: its client, function, in-flight count and poll back-off."""

    name: str
    client: Any
    function: Callable[[QueueMessage], None]
    in_flight: int = 0
    next_poll: float = 0.0
    delay: float = 0.0


class HostLikePump:
    """Delivers the jobs and tasks queues to function_app's queue functions the way the Functions host does.

    Per queue: one receive of up to ``batchSize`` messages whenever no more than ``newBatchThreshold``
    are in flight; an empty receive backs off from 0.1 s, doubling up to ``maxPollingInterval``; each
    message runs on its own worker thread and is deleted after success (a failure is left to reappear
    after the lease). Receives and deletes go through the engine's clients, so REQUEST_COUNTER sees them.
    """

    MIN_POLL = 0.1

    def __init__(self, engine: Engine, options: QueueOptions) -> None:
        function_app._engine = engine
        self.options = options
        self.feeds = [_Feed("jobs", engine.repos.jobs_queue.client, function_app.process_job_message),
                      _Feed("tasks", engine.repos.tasks_queue.client, function_app.process_task_message)]
        self.stats: Counter[str] = Counter()
        self._changed = threading.Condition()

    def run(self, done: threading.Event, timeout: float) -> None:
        """Deliver until ``done`` is set; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        workers = 2 * (self.options.batch_size + self.options.new_batch_threshold)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pump") as pool:
            while not done.is_set():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job not finished after {timeout:.0f} s; pump stats {dict(self.stats)}")
                for feed in self.feeds:
                    if feed.in_flight <= self.options.new_batch_threshold and time.monotonic() >= feed.next_poll:
                        for message in self._receive(feed):
                            with self._changed:
                                feed.in_flight += 1
                            pool.submit(self._deliver, feed, message)
                with self._changed:
                    if not done.is_set():
                        self._changed.wait(self._idle_wait())

    def _idle_wait(self) -> float:
        """Seconds until some feed may poll again (called holding the condition)."""
        now = time.monotonic()
        due = [f.next_poll - now for f in self.feeds if f.in_flight <= self.options.new_batch_threshold]
        return min(max(0.001, min(due, default=0.5)), 0.5)

    def _receive(self, feed: _Feed) -> list[Any]:
        size = self.options.batch_size
        pages = feed.client.receive_messages(messages_per_page=size, max_messages=size,
                                             visibility_timeout=LEASE_SECONDS).by_page()
        messages = list(next(pages, []))
        self._count("receives")
        if messages:
            feed.delay = 0.0
        else:
            self._count(f"empty_receives_{feed.name}")
            feed.delay = min(max(self.MIN_POLL, feed.delay * 2), self.options.max_polling_interval)
            feed.next_poll = time.monotonic() + feed.delay
        return messages

    def _deliver(self, feed: _Feed, message: Any) -> None:
        try:
            feed.function(QueueMessage(id=message.id, body=message.content.encode(),
                                       dequeue_count=message.dequeue_count, pop_receipt=message.pop_receipt))
            feed.client.delete_message(message)
            self._count("deletes")
        except Exception:  # noqa: BLE001 - like the host: log, leave the message to come back
            self._count(f"failures_{feed.name}")
            log(f"{feed.name} message {message.id} failed:\n{traceback.format_exc()}")
        finally:
            with self._changed:
                feed.in_flight -= 1
                self._changed.notify_all()

    def _count(self, key: str) -> None:
        with self._changed:
            self.stats[key] += 1


def _commit_kind(task: Any, shard: Any, stage: Any) -> str:
    """A task-end commit touches the stage row only when it ends its counter shard."""
    return "ends_shard" if stage is not None else "shard_only"


def measure_requests(connection_string: str, n: int, options: QueueOptions, events: EventLog) -> dict[str, Any]:
    """Requests per task of one hello_world job of 2n tasks, delivered by a HostLikePump."""
    engine = new_engine(connection_string)
    commits = probe(engine.store, "commit_task_end", kind=_commit_kind)
    claims = probe(engine.store, "replace_task")
    pump = HostLikePump(engine, options)
    events_before = events.snapshot()
    before = REQUEST_COUNTER.snapshot()
    started = time.perf_counter()
    job_id = submit_in_process(engine, n)
    pump.run(events.finished(job_id), timeout=max(120.0, 0.5 * n))
    seconds = time.perf_counter() - started
    used = requests_since(before)
    tasks = 2 * n
    job = engine.store.get_job(job_id)
    delivery = pump.stats["receives"] + pump.stats["deletes"]
    drop_storage(engine.repos)
    return {
        "n": n, "tasks": tasks, "status": str(job.status) if job else None, "seconds": round(seconds, 2),
        "tasks_per_s": round(tasks / seconds, 1), "requests": used,
        "per_task": {s: round(used[s] / tasks, 3) for s in SERVICES},
        "delivery_per_task": round(delivery / tasks, 3),
        "engine_per_task": round((used["total"] - delivery) / tasks, 3),
        "pump": dict(pump.stats),
        "commit_task_end": commits.as_dict(), "replace_task": claims.as_dict(),
        "events": dict(events.snapshot() - events_before),
    }


# ---------------------------------------------------------------------------------------------- 2. fan-out
def measure_fanout(connection_string: str, n: int, threads: int) -> dict[str, Any]:
    """Time ``engine.run_stage`` for stage 1 of hello_world n, split into row writes and message sends."""
    engine = new_engine(connection_string, fanout_threads=threads)
    rows = probe(engine.store, "create_stage")
    sends = probe(engine.repos.tasks_queue, "send_many")
    job_id = submit_in_process(engine, n)
    received = engine.repos.jobs_queue.client.receive_message(visibility_timeout=LEASE_SECONDS)
    message = decode_job_message(received.content)
    before = REQUEST_COUNTER.snapshot()
    started = time.perf_counter()
    engine.run_stage(message)
    seconds = time.perf_counter() - started
    used = requests_since(before)
    queued = engine.repos.tasks_queue.client.get_queue_properties().approximate_message_count
    drop_storage(engine.repos)
    return {"fanout_threads": threads, "tasks": n, "job_id": job_id, "seconds": round(seconds, 3),
            "row_writes_s": round(rows.seconds, 3), "message_sends_s": round(sends.seconds, 3),
            "other_s": round(seconds - rows.seconds - sends.seconds, 3),
            "sends_per_s": round(n / sends.seconds, 1) if sends.seconds else None,
            "requests": used, "messages_queued": queued}


def fanout_series(connection_string: str, profile: Profile) -> list[dict[str, Any]]:
    """For each FANOUT_THREADS value: the run with the median total time, with all runs attached.

    Thread counts are interleaved (8, 16, 32, 8, 16, 32, ...) so drift in Azurite or in the machine's
    load spreads over all of them instead of favouring the first.
    """
    runs: dict[int, list[dict[str, Any]]] = {t: [] for t in profile.fanout_threads}
    for repeat in range(profile.fanout_repeats):
        for threads in profile.fanout_threads:
            log(f"fan-out n={profile.fanout_n} FANOUT_THREADS={threads} run {repeat + 1}/{profile.fanout_repeats}")
            runs[threads].append(measure_fanout(connection_string, profile.fanout_n, threads))
    series = []
    for done in runs.values():
        median = sorted(done, key=lambda r: r["seconds"])[len(done) // 2]
        series.append({**median, "runs_s": [r["seconds"] for r in done]})
    return series


# ---------------------------------------------------------------------------------------------- 3. end to end
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


def measure_raw_queue(connection_string: str, messages: int, threads: int, batch: int) -> dict[str, Any]:
    """The queue's own rate here: send ``messages`` in parallel, then receive + delete them with ``threads``."""
    repos = Repositories(fresh_settings(connection_string, fanout_threads=threads)).ensure()
    queue = repos.tasks_queue
    job_id = make_job_id("hello_world", {"n": messages})
    bodies = [TaskMessage(job_id=job_id, task_id=make_task_id(job_id, 1, i)) for i in range(messages)]
    started = time.perf_counter()
    queue.send_many(bodies)
    send_s = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        handled = sum(pool.map(lambda _: _drain(queue.client, batch), range(threads)))
    receive_s = time.perf_counter() - started
    drop_storage(repos)
    return {"messages": messages, "threads": threads, "receive_batch": batch, "handled": handled,
            "send_s": round(send_s, 2), "receive_delete_s": round(receive_s, 2),
            "send_per_s": round(messages / send_s, 1), "receive_delete_per_s": round(messages / receive_s, 1),
            "send_receive_delete_per_s": round(messages / (send_s + receive_s), 1)}


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\S+) \S+ (.*)$")
_EXECUTED = re.compile(r"Executed process_task_message \(Succeeded, (\d+) ms\)")


def read_host_log(path: Path) -> tuple[list[tuple[float, dict[str, Any]]], list[int], Counter[str]]:
    """(timestamped engine events, task invocation durations in ms, lines by level) of one host's log."""
    events: list[tuple[float, dict[str, Any]]] = []
    durations: list[int] = []
    levels: Counter[str] = Counter()
    if not path.exists():
        return events, durations, levels
    for line in path.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if not match:
            continue
        levels[match.group(2)] += 1
        stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        text = match.group(3)
        if text.startswith('{"event"'):
            with suppress(ValueError):
                events.append((stamp, json.loads(text)))
        elif executed := _EXECUTED.search(text):
            durations.append(int(executed.group(1)))
    return events, durations, levels


def wait_for_job(urls: list[str], job_id: str, timeout: float,
                 poll_s: float = POLL_SECONDS) -> tuple[dict[str, Any], list[float]]:
    """Poll the status route (hosts in turn) every ``poll_s`` until terminal; (last body, poll seconds)."""
    deadline = time.monotonic() + timeout
    polls: list[float] = []
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        started = time.perf_counter()
        body = requests.get(f"{urls[len(polls) % len(urls)]}/jobs/status/{job_id}", timeout=30).json()
        polls.append(time.perf_counter() - started)
        if body.get("status") in TERMINAL:
            return body, polls
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s: {body.get('tasks')}")


TIMELINE = (  # (label, event, match on fields)
    ("stage 1 message received", "job_message", {"kind": "stage", "stage": 1}),
    ("stage 1 dispatched (rows + messages)", "stage_dispatched", {"stage": 1}),
    ("stage 1 ended (last task committed)", "stage_advanced", {"stage": 1}),
    ("stage 2 message received", "job_message", {"kind": "stage", "stage": 2}),
    ("stage 2 dispatched", "stage_dispatched", {"stage": 2}),
    ("stage 2 ended", "stage_advanced", {"stage": 2}),
    ("completion message received", "job_message", {"kind": "complete"}),
    ("job finished", "job_finished", {}),
)


def summarize_hosts(logs: list[Path], job_id: str, submitted_at: float) -> dict[str, Any]:
    """Per-host task split, invocation times and anomalies; the job's timeline after submit."""
    per_host, timeline_at = [], {}
    for index, path in enumerate(logs):
        events, durations, _ = read_host_log(path)
        mine = [(t, e) for t, e in events if e.get("job_id") == job_id]
        counts = Counter(e["event"] for _, e in mine)
        per_host.append({"host": index, "tasks_started": counts["task_started"],
                         "task_invocation_ms_mean": round(statistics.fmean(durations), 1) if durations else None,
                         "task_invocation_ms_p95": _percentile(durations, 95),
                         "claimed_elsewhere": counts["task_claimed_elsewhere"],
                         "end_duplicates": counts["task_end_duplicate"],
                         "messages_ignored": counts["task_message_ignored"]})
        for stamp, event in mine:
            for label, name, match in TIMELINE:
                if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                    timeline_at[label] = min(timeline_at.get(label, stamp), stamp)
    total = sum(h["tasks_started"] for h in per_host) or 1
    for host in per_host:
        host["share"] = round(host["tasks_started"] / total, 3)
    timeline = [{"event": label, "s_after_submit": round(timeline_at[label] - submitted_at, 2)}
                for label, _, _ in TIMELINE if label in timeline_at]
    return {"per_host": per_host, "timeline": timeline}


def _percentile(values: list[int], pct: int) -> float | None:
    if len(values) < 2:
        return float(values[0]) if values else None
    return round(statistics.quantiles(values, n=100)[pct - 1], 1)


def measure_end_to_end(connection_string: str, n: int, hosts: int, workdir: Path) -> dict[str, Any]:
    """hello_world n over HTTP through ``hosts`` local host processes, timed from submit to completed."""
    repos = Repositories(fresh_settings(connection_string)).ensure()
    env = settings_env(repos.settings)
    logs = [workdir / f"host{i}.log" for i in range(hosts)]
    procs = [HostProcess(env, path) for path in logs]
    try:
        for proc in procs:
            proc.start()
        urls = [p.url for p in procs]
        submitted_at, started = time.time(), time.perf_counter()
        response = requests.post(f"{urls[0]}/jobs/submit/hello_world", json={"n": n}, timeout=30)
        if response.status_code != 202:
            raise RuntimeError(f"submit answered {response.status_code}: {response.text}")
        job_id = response.json()["job_id"]
        final, polls = wait_for_job(urls, job_id, timeout=max(180.0, 0.6 * n))
        seconds = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.stop()
    drop_storage(repos)
    tasks = 2 * n
    return {"n": n, "tasks": tasks, "hosts": hosts, "status": final.get("status"), "seconds": round(seconds, 2),
            "tasks_per_s": round(tasks / seconds, 1), "status_polls": len(polls),
            "status_poll_ms_mean": round(1000 * statistics.fmean(polls), 1),
            **summarize_hosts(logs, job_id, submitted_at)}


# ---------------------------------------------------------------------------------------------- report
def machine_facts(profile: Profile) -> dict[str, Any]:
    """What the numbers were measured on."""
    def version(package: str) -> str | None:
        with suppress(metadata.PackageNotFoundError):
            return metadata.version(package)
        return None

    azurite = json.loads((ROOT / "node_modules" / "azurite" / "package.json").read_text()).get("version")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "profile": profile.name,
            "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "node": node or None, "azurite": azurite, "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "packages": {p: version(p) for p in ("azure-data-tables", "azure-storage-queue", "azure-core",
                                                 "azure-functions")},
            "host_json_queues": load_host_json().get("extensions", {}).get("queues", {})}


def markdown(summary: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    m = summary["machine"]
    title = (f"## Engine benchmark ({m['profile']}): {m['date']}, {m['nproc']} CPUs, Python {m['python']}, "
             f"Azurite {m['azurite']}, load {m['loadavg_start']}")
    out = [title, ""]
    out += _requests_table(summary.get("requests"))
    out += _fanout_table(summary.get("fanout"))
    out += _e2e_table(summary.get("e2e"))
    return "\n".join(out)


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table: labels left, numbers right."""
    align = [":---", *("---:" for _ in header[1:])]  # labels left, numbers right
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _failed(section: Any) -> list[str] | None:
    if section is None:
        return []
    if isinstance(section, dict) and "error" in section:
        return [f"**failed:** `{section['error']}`", ""]
    return None


def _requests_table(section: Any) -> list[str]:
    if (failed := _failed(section)) is not None:
        return failed
    out = ["### 1. Storage requests per task (hello_world, in process, host-like pump, submit included)", ""]
    rows = []
    for r in section:
        p = r["per_task"]
        rows.append([r["n"], r["tasks"], r["status"], r["seconds"], r["tasks_per_s"], p["table"], p["queue"],
                     p["blob"], f"**{p['total']}**", r["delivery_per_task"], r["engine_per_task"],
                     _per_task(r["commit_task_end"]["conflicts"], r["tasks"]),
                     r["commit_task_end"].get("conflicts_by", {}).get("ends_shard", 0),
                     _per_task(r["replace_task"]["conflicts"], r["tasks"]),
                     sum(v for k, v in r["pump"].items() if k.startswith("empty_receives"))])
    out += markdown_table(["n", "tasks", "status", "s", "tasks/s", "table/task", "queue/task", "blob/task", "total/task",
                   "of which delivery/task", "engine/task", "commit conflicts (/task)", "of which ending a shard", "claim conflicts (/task)",
                   "empty receives"], rows)
    note = ("delivery = the host's receives (batch of up to 16) + deletes; engine = everything else "
            "(submit, rows, task messages, reads, commits). A commit that ends its counter shard also "
            "updates the stage row.")
    return [*out, note, ""]


def _per_task(count: int, tasks: int) -> str:
    return f"{count} ({count / tasks:.2f})"


def _fanout_table(section: Any) -> list[str]:
    if (failed := _failed(section)) is not None:
        return failed
    n = section[0]["tasks"]
    out = [f"### 2. Fan-out of {n} tasks (`engine.run_stage`, median of {len(section[0]['runs_s'])})", ""]
    rows = [[r["fanout_threads"], f"**{r['seconds']}**", r["row_writes_s"], r["message_sends_s"], r["other_s"],
             r["sends_per_s"], r["requests"]["table"], r["requests"]["queue"], r["runs_s"]] for r in section]
    return out + markdown_table(["FANOUT_THREADS", "total s", "row writes s", "message sends s", "other s",
                         "sends/s", "table requests", "queue requests", "all runs s"], rows)


def _e2e_table(section: Any) -> list[str]:
    if (failed := _failed(section)) is not None:
        return failed
    e2e, raw = section["engine"], section["raw_queue"]
    out = [f"### 3. End to end: hello_world n={e2e['n']} ({e2e['tasks']} tasks) on {e2e['hosts']} local hosts", ""]
    split = ", ".join(f"host{h['host']} {h['tasks_started']} ({h['share']:.0%})" for h in e2e["per_host"])
    invocation = ", ".join(f"host{h['host']} {h['task_invocation_ms_mean']} ms (p95 {h['task_invocation_ms_p95']})"
                           for h in e2e["per_host"])
    anomalies = sum(h["claimed_elsewhere"] + h["end_duplicates"] + h["messages_ignored"] for h in e2e["per_host"])
    rows = [["submit -> completed (status polled every 0.5 s)", f"{e2e['seconds']} s ({e2e['status']})"],
            ["engine throughput", f"**{e2e['tasks_per_s']} tasks/s**"],
            [(f"raw queue send+receive+delete ({raw['threads']} threads, batch {raw['receive_batch']}, "
              f"{raw['messages']} msgs)"),
             (f"**{raw['send_receive_delete_per_s']} msg/s** (send {raw['send_per_s']}/s, "
              f"receive+delete {raw['receive_delete_per_s']}/s)")],
            ["engine tasks/s / raw msg/s", f"**{section['ratio']}**"],
            ["tasks per host (task_started events)", split],
            ["task invocation, mean (host log)", invocation],
            ["duplicate / ignored deliveries", anomalies],
            ["status polls (their load is part of the run)",
             f"{e2e['status_polls']}, mean {e2e['status_poll_ms_mean']} ms each"]]
    out += markdown_table(["measure", "value"], rows)
    out += markdown_table(["timeline (host logs)", "s after submit"], [[t["event"], t["s_after_submit"]]
                                                                for t in e2e["timeline"]])
    return out


def write_json(summary: dict[str, Any], profile: Profile) -> Path:
    """Write the summary to benchmarks/results/bench_engine-<date>[-quick].json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if profile.name == "full" else f"-{profile.name}"
    path = RESULTS / f"bench_engine-{datetime.now(UTC):%Y-%m-%d}{suffix}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- main
def run_section(name: str, measure: Callable[[], Any]) -> Any:
    """Run one section; a failure is recorded (and printed) so the other sections still run."""
    started = time.perf_counter()
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - report it, go on with the next section
        log(f"section {name} failed:\n{traceback.format_exc()}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        log(f"section {name} took {time.perf_counter() - started:.1f} s")


def run_all(profile: Profile, sections: set[str], workdir: Path, events: EventLog) -> dict[str, Any]:
    """Start Azurite, run the chosen sections, stop Azurite (by PID, whatever happens)."""
    summary: dict[str, Any] = {"machine": machine_facts(profile), "profile": asdict(profile)}
    azurite = Azurite(location=workdir / "azurite").start()
    log(f"Azurite pid {azurite.process.pid} on ports {azurite.blob_port}/{azurite.queue_port}/{azurite.table_port}")
    conn = azurite.connection_string
    try:
        options = QueueOptions.from_host_config(load_host_json())
        if "requests" in sections:
            def requests_section() -> list[dict[str, Any]]:
                results = []
                for n in profile.request_ns:
                    log(f"requests per task: hello_world n={n} ({2 * n} tasks)")
                    results.append(measure_requests(conn, n, options, events))
                return results
            summary["requests"] = run_section("requests", requests_section)
        if "fanout" in sections:
            summary["fanout"] = run_section("fanout", lambda: fanout_series(conn, profile))
        if "e2e" in sections:
            summary["e2e"] = run_section("e2e", lambda: end_to_end_section(conn, profile, options, workdir))
    finally:
        azurite.stop()
        log("Azurite stopped")
    summary["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return summary


def end_to_end_section(conn: str, profile: Profile, options: QueueOptions, workdir: Path) -> dict[str, Any]:
    """Raw queue rate, then the engine end to end, on the same Azurite; their ratio."""
    log(f"raw queue rate: {profile.raw_messages} messages, {profile.raw_threads} threads")
    raw = measure_raw_queue(conn, profile.raw_messages, profile.raw_threads, options.batch_size)
    log(f"end to end: hello_world n={profile.e2e_n} on {profile.hosts} hosts")
    engine = measure_end_to_end(conn, profile.e2e_n, profile.hosts, workdir)
    return {"raw_queue": raw, "engine": engine,
            "ratio": round(engine["tasks_per_s"] / raw["send_receive_delete_per_s"], 3)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--only", default="requests,fanout,e2e",
                        help="comma-separated sections to run: requests, fanout, e2e (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print Markdown and JSON; write the JSON file."""
    args = parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - {"requests", "fanout", "e2e"}
    if unknown:
        raise SystemExit(f"unknown sections: {sorted(unknown)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops Azurite and the hosts
    logging.getLogger("azure").setLevel(logging.WARNING)
    events = EventLog.install()
    profile = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        summary = run_all(profile, sections, Path(tmp), events)
    summary["machine"]["wall_s"] = round(time.perf_counter() - started, 1)
    path = write_json(summary, profile)
    print(markdown(summary))
    print("```json")
    print(json.dumps(summary, indent=2))
    print("```")
    log(f"wrote {path.relative_to(ROOT)} ({summary['machine']['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmark scripts share: paths, progress lines, machine facts, Markdown tables, results files,
host logs, and waiting for a job over HTTP.

Importing it puts the repository root and ``tests/`` on ``sys.path`` (the scripts run from
``benchmarks/`` and use the app's modules and the tests' process helpers). Only the standard library is
imported here, so a script that measures memory (``bench_cog.py``) can use it in its parent process.
"""
from __future__ import annotations

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
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
for _path in (ROOT / "tests", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

TERMINAL_STATUSES = ("completed", "failed", "cancelled")


# ---------------------------------------------------------------------------------------------- progress
def progress_log(name: str) -> Callable[[str], None]:
    """A ``log(text)`` for progress lines on stderr (stdout carries only the results)."""
    def log(text: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
    return log


# ---------------------------------------------------------------------------------------------- machine
def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None where missing)."""
    def version(name: str) -> str | None:
        with suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
        return None
    return {name: version(name) for name in names}


def command_output(*cmd: str) -> str | None:
    """A command's stripped stdout, or None if it cannot run or prints nothing."""
    with suppress(OSError):
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip() or None
    return None


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_facts(packages: Iterable[str] = (), stack: bool = True, **extra: Any) -> dict[str, Any]:
    """What the numbers were measured on: date, CPUs, Python, load, package versions, plus ``extra``.

    ``stack`` adds Node, Azurite, host.json's queue settings and the hosts' worker threads (the stack the engine runs on).
    """
    facts: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), **extra,
                             "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
                             "python": platform.python_version(), "platform": platform.platform()}
    if stack:
        package = ROOT / "node_modules" / "azurite" / "package.json"
        facts["node"] = command_output("node", "--version")
        facts["azurite"] = json.loads(package.read_text()).get("version") if package.exists() else None
        host = json.loads((ROOT / "host.json").read_text())
        facts["host_json_queues"] = host.get("extensions", {}).get("queues", {})
        local = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]  # hosts get settings_env's
        facts["python_threadpool_thread_count"] = local.get("PYTHON_THREADPOOL_THREAD_COUNT")
    facts["loadavg_start"] = loadavg()
    facts["packages"] = package_versions(packages)
    return facts


# ---------------------------------------------------------------------------------------------- numbers
def percentile(values: list[float], pct: int) -> float | None:
    """The ``pct``-th percentile (inclusive method), rounded to 0.1; None when empty."""
    if not values:
        return None
    if len(values) == 1:
        return round(float(values[0]), 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 1)


def stats_ms(values: list[float]) -> dict[str, Any]:
    """count, mean, min, p50, p90, p95, p99, max and sum (s) of durations in ms; only count when empty."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(ordered), "mean": round(statistics.fmean(ordered), 1), "min": round(ordered[0], 1),
            **{f"p{p}": percentile(ordered, p) for p in (50, 90, 95, 99)}, "max": round(ordered[-1], 1),
            "sum_s": round(sum(ordered) / 1000, 2)}


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table (labels left, numbers right) and a blank line, as lines."""
    align = [":---", *("---:" for _ in header[1:])]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


# ---------------------------------------------------------------------------------------------- host logs
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\S+) (\S+) (.*)$")
_EXECUTED = re.compile(r"Executed process_task_message \(Succeeded, (\d+) ms\)")


def parse_log_line(line: str) -> tuple[float, str, str, str] | None:
    """(epoch seconds, level, logger, message) of one local host log line, or None for other lines."""
    match = _LOG_LINE.match(line)
    if not match:
        return None
    stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return stamp, match.group(2), match.group(3), match.group(4)


def log_event(message: str) -> dict[str, Any] | None:
    """The engine's JSON event in a log message, or None."""
    if message.startswith('{"event"'):
        with suppress(ValueError):
            return json.loads(message)
    return None


def read_host_log(path: Path) -> tuple[list[tuple[float, dict[str, Any]]], list[int], Counter[str]]:
    """(timestamped engine events, task invocation durations in ms, lines by level) of one host's log."""
    events: list[tuple[float, dict[str, Any]]] = []
    durations: list[int] = []
    levels: Counter[str] = Counter()
    if not path.exists():
        return events, durations, levels
    for line in path.read_text(errors="replace").splitlines():
        parsed = parse_log_line(line)
        if parsed is None:
            continue
        stamp, level, _, text = parsed
        levels[level] += 1
        if (event := log_event(text)) is not None:
            events.append((stamp, event))
        elif executed := _EXECUTED.search(text):
            durations.append(int(executed.group(1)))
    return events, durations, levels


class LogTail:
    """Reads a growing host log incrementally: each ``read()`` returns the lines completed since the last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[tuple[float, str, str, str]]:
        """New parsed lines (epoch seconds, level, logger, message)."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [p for line in complete if (p := parse_log_line(line.decode(errors="replace"))) is not None]


# ---------------------------------------------------------------------------------------------- jobs over HTTP
def wait_for_job(urls: list[str], job_id: str, timeout: float,
                 poll_s: float = 0.5) -> tuple[dict[str, Any], list[float]]:
    """Poll the status route (hosts in turn) every ``poll_s`` until terminal; (last body, seconds per poll)."""
    import requests  # here, not at import: bench_cog's parent process stays small

    deadline = time.monotonic() + timeout
    polls: list[float] = []
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        started = time.perf_counter()
        body = requests.get(f"{urls[len(polls) % len(urls)]}/jobs/status/{job_id}", timeout=30).json()
        polls.append(time.perf_counter() - started)
        if body.get("status") in TERMINAL_STATUSES:
            return body, polls
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s: {body.get('tasks')}")


# ---------------------------------------------------------------------------------------------- results
def write_results(name: str, summary: dict[str, Any], suffix: str = "") -> Path:
    """Write ``summary`` to benchmarks/results/<name>-<UTC date><suffix>.json; the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{datetime.now(UTC):%Y-%m-%d}{suffix}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def run_benchmark(name: str, measure: Callable[[Path], dict[str, Any]], markdown: Callable[[dict[str, Any]], str],
                  suffix: str = "", workdir: Path | None = None, json_keys: tuple[str, ...] | None = None) -> int:
    """The scripts' common main: measure in a work folder (temporary unless given), then record wall time
    and load, write the JSON results, print Markdown and the JSON (``json_keys`` only, if given).

    SIGTERM becomes SystemExit, so the scripts' ``finally`` blocks stop what they started (by PID).
    """
    log = progress_log(name)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("azure").setLevel(logging.WARNING)
    started = time.perf_counter()
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        summary = measure(workdir)
    else:
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
            summary = measure(Path(tmp))
    summary["machine"].update(wall_s=round(time.perf_counter() - started, 1), loadavg_end=loadavg())
    path = write_results(name, summary, suffix)
    print(markdown(summary))
    shown = summary if json_keys is None else {k: summary[k] for k in json_keys if k in summary}
    print("```json")
    print(json.dumps(shown, indent=2))
    print("```")
    log(f"wrote {path.relative_to(ROOT)} ({summary['machine']['wall_s']} s)")
    return 0

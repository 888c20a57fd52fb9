"""Text rendering for ``cli.py``: progress bars per stage, job summaries, tables. Pure functions of the
API's JSON (and the time), plus ``LiveView``, which redraws in place on a terminal and prints one line per
change anywhere else."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, TextIO

TERMINAL = ("completed", "failed", "cancelled")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
COLORS = {"completed": "32", "failed": "31", "cancelled": "33", "processing": "36", "queued": "2"}


def parse_time(value: str | None) -> datetime | None:
    """An API timestamp (ISO 8601, ``Z``) as an aware datetime, or None."""
    return datetime.fromisoformat(value) if value else None


def utcnow() -> datetime:
    """Now, aware, UTC."""
    return datetime.now(UTC)


def seconds(value: float | None) -> str:
    """``0.4s``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if value is None:
        return "-"
    value = max(0.0, value)
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def paint(text: str, status: str, color: bool) -> str:
    """``text`` in the colour of ``status`` when ``color``."""
    code = COLORS.get(status)
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def bar(fraction: float, width: int, unicode: bool = False) -> str:
    """A fixed-width bar, ``[#####-----]``."""
    full, empty = ("█", "░") if unicode else ("#", "-")
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + full * filled + empty * (width - filled) + "]"


def stage_elapsed(stage: dict, now: datetime) -> float | None:
    """Seconds the stage has run: its duration once ended, else since it started; None before."""
    if stage.get("duration_s") is not None:
        return stage["duration_s"]
    started = parse_time(stage.get("started_at"))
    return (now - started).total_seconds() if started else None


def stage_line(stage: dict, total_stages: int, now: datetime, width: int = 24, color: bool = False,
               unicode: bool = False) -> str:
    """One stage: number, name, bar, completed/failed/total, running, rate, elapsed, status."""
    t = stage["tasks"]
    ended = t["completed"] + t["failed"] + t["cancelled"]
    fraction = 1.0 if stage["status"] == "completed" else (ended / t["total"] if t["total"] else 0.0)
    elapsed = stage_elapsed(stage, now)
    rate = f"{ended / elapsed:.1f}/s" if elapsed and ended else "-"
    counts = f"{t['completed']}/{t['total']} done" if t["total"] or stage["status"] != "queued" else "not started"
    if t["failed"]:
        counts += f" {paint(str(t['failed']) + ' failed', 'failed', color)}"
    if t["processing"]:
        counts += f" {t['processing']} running"
    if t["cancelled"]:
        counts += f" {t['cancelled']} cancelled"
    return (f"{stage['stage']}/{total_stages} {stage['name']:<16} {bar(fraction, width, unicode)} {counts}"
            f"  {rate} {seconds(elapsed)}  {paint(stage['status'], stage['status'], color)}")


def header_line(status: dict, now: datetime, color: bool = False) -> str:
    """``job <id> <type>: <status> stage s/n <progress>% <elapsed>``."""
    created = parse_time(status.get("created_at"))
    ended = parse_time(status.get("updated_at")) if status["status"] in TERMINAL else now
    elapsed = (ended - created).total_seconds() if created and ended else None
    return (f"job {status['job_id'][:12]} {status['job_type']}: {paint(status['status'], status['status'], color)}"
            f"  stage {status['stage']}/{status['total_stages']}  {status.get('progress', 0):.0f}%"
            f"  {seconds(elapsed)}")


def fit(line: str, columns: int) -> str:
    """``line`` cut to ``columns`` visible characters (colour dropped when it must be cut)."""
    plain = ANSI.sub("", line)
    return line if len(plain) <= columns else plain[:max(1, columns - 1)] + "…"


def progress_lines(status: dict, now: datetime, width: int = 24, color: bool = False,
                   unicode: bool = False) -> list[str]:
    """The live view: a header, then one bar per stage."""
    return [header_line(status, now, color)] + [
        "  " + stage_line(s, status["total_stages"], now, width, color, unicode) for s in status["stages"]]


def preview(value: Any, limit: int = 60) -> str:
    """Compact JSON of ``value``, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def result_lines(result: Any) -> list[str]:
    """A job's ``result_data`` in a few lines: lists by count and first item, the rest compactly."""
    if not isinstance(result, dict):
        return [preview(result, 100)]
    lines = []
    for key, value in result.items():
        if isinstance(value, list):
            first = f", first: {preview(value[0])}" if value else ""
            lines.append(f"{key}: {len(value)} items{first}")
        else:
            lines.append(f"{key}: {preview(value, 80)}")
    return lines


def summary_lines(status: dict, now: datetime | None = None, color: bool = False, stages: bool = True) -> list[str]:
    """What a finished (or running) job came to: status, duration, tasks, attempts, (stages,) result or errors."""
    now = now or utcnow()
    t = status["tasks"]
    created, updated = parse_time(status["created_at"]), parse_time(status["updated_at"])
    took = (f"in {seconds((updated - created).total_seconds())}" if status["status"] in TERMINAL
            else f"for {seconds((now - created).total_seconds())} so far")
    lines = [f"{status['job_type']} job {paint(status['status'], status['status'], color)} {took}",
             f"  id        {status['job_id']}",
             (f"  tasks     {t['total']} total: {t['completed']} completed, {t['failed']} failed, "
              f"{t['cancelled']} cancelled, {t['processing']} running, {t['queued']} queued"),
             f"  attempts  {status.get('attempts', 0)} (job retries: {status.get('retries', 0)})"]
    for s in status["stages"] if stages else []:
        ran = s["tasks"]["total"] or s["status"] != "queued"
        lines.append(f"  stage {s['stage']}   {s['name']}: " + (
            f"{s['status']}, {s['tasks']['completed']}/{s['tasks']['total']} completed in "
            f"{seconds(stage_elapsed(s, now))}" if ran else "not run"))
    if status.get("result_data") is not None:
        lines += ["  result    " + line if i == 0 else "            " + line
                  for i, line in enumerate(result_lines(status["result_data"]))]
    if status.get("error_details"):
        lines.append("  " + paint("error", "failed", color) + "     " + status["error_details"])
    if status.get("recent_errors"):
        lines.append("  recent errors:")
        lines += [f"    {e['task_id']} ({e['status']}, {e['attempts']} attempt{'s' * (e['attempts'] != 1)}): "
                  f"{e['error']}" for e in status["recent_errors"]]
    return lines


def health_lines(body: dict) -> list[str]:
    """The health report: overall status, each check, queue depths, versions."""
    lines = [str(body.get("status"))]
    for name, check in body.get("checks", {}).items():
        lines.append(f"  {name:<9} " + ("ok" if check.get("ok") else f"FAILING: {check.get('error', '')}"))
    lines += [f"  queue {queue}: {depth} messages" for queue, depth in body.get("queues", {}).items()]
    lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in body.get("versions", {}).items()))
    return lines


def table(rows: list[list[str]], headers: list[str]) -> list[str]:
    """Left-aligned columns, widths from the content."""
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers] + rows]


def schema_type(prop: dict, defs: dict) -> str:
    """A JSON Schema property as a short type: ``integer 1..1000``, ``array[integer]``, ``one of a|b``."""
    if "$ref" in prop:
        target = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
        return schema_type({**target, **{k: v for k, v in prop.items() if k != "$ref"}}, defs)
    if "enum" in prop:
        return "one of " + "|".join(str(v) for v in prop["enum"])
    if "anyOf" in prop:
        kinds = [schema_type(p, defs) for p in prop["anyOf"] if p.get("type") != "null"]
        return "|".join(kinds) + (" or null" if len(kinds) < len(prop["anyOf"]) else "")
    kind = prop.get("type", "any")
    if kind == "array":
        kind = f"array[{schema_type(prop.get('items', {}), defs)}]"
    if "format" in prop:
        kind += f" ({prop['format']})"
    if "minimum" in prop or "maximum" in prop:
        kind += f" {prop.get('minimum', '')}..{prop.get('maximum', '')}"
    return kind


def job_type_lines(info: dict) -> list[str]:
    """A job type: description, stages, parameters with type, default or required, description."""
    lines = [f"{info['job_type']}: {info['description']}", "  stages:"]
    lines += [f"    {s['stage']}. {s['name']} ({s['task_type']}, {s['parallelism']}): {s['description']}"
              for s in info["stages"]]
    schema = info.get("parameters", {})
    required, defs = set(schema.get("required", [])), schema.get("$defs", {})
    rows = [[name, schema_type(prop, defs),
             "required" if name in required else
             f"default {json.dumps(prop['default'])}" if "default" in prop else "optional",
             prop.get("description", "")] for name, prop in schema.get("properties", {}).items()]
    lines.append("  parameters:")
    lines += ["    " + line for line in table(rows, ["name", "type", "default", "description"])[1:]]
    if info.get("tolerated_failure_fraction"):
        lines.append(f"  tolerates up to {info['tolerated_failure_fraction']:.0%} failed tasks")
    return lines


class LiveView:
    """Progress of one job: redrawn in place on a terminal; elsewhere one line per stage change."""

    def __init__(self, out: TextIO, tty: bool, color: bool = False, unicode: bool = False,
                 columns: int = 100) -> None:
        """Write to ``out``; ``tty`` chooses redraw-in-place within ``columns``."""
        self.out, self.tty, self.color, self.unicode, self.columns = out, tty, color, unicode, columns
        self.drawn = 0
        self.seen: dict[Any, tuple] = {}

    def update(self, status: dict, now: datetime) -> None:
        """Show ``status`` (a GET /jobs/status body) as of ``now``."""
        if self.tty:
            width = max(8, min(24, self.columns - 80))
            lines = [fit(line, self.columns - 1)
                     for line in progress_lines(status, now, width, color=self.color, unicode=self.unicode)]
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(up + "".join("\x1b[2K" + line + "\n" for line in lines))
            self.drawn = len(lines)
        else:
            for line in self.changes(status, now):
                self.out.write(line + "\n")
        self.out.flush()

    def changes(self, status: dict, now: datetime) -> list[str]:
        """Plain lines for what changed since the last call: the job's status, then each changed stage."""
        found = []
        job_key = (status["status"], status["stage"])
        if self.seen.get("job") != job_key:
            self.seen["job"] = job_key
            found.append(header_line(status, now))
        for s in status["stages"]:
            key = (s["status"], *(s["tasks"][k] for k in ("total", "completed", "failed", "cancelled")))
            not_started = s["status"] == "queued" and not s["tasks"]["total"] and s["stage"] not in self.seen
            if self.seen.get(s["stage"]) != key and not not_started:
                self.seen[s["stage"]] = key
                found.append("  " + stage_line(s, status["total_stages"], now, width=20))
        return found


def trigger_lines(kind: str, rows: list[dict]) -> list[str]:
    """Schedules or watches as a table (issue #13)."""
    if kind == "schedules":
        cells = [[r["schedule_id"], r.get("name") or "", r["job_type"], r["expression"],
                  (r.get("next_slot") or "")[:19].replace("T", " "), r.get("last_job_id") or r.get("last_error") or "",
                  str(r.get("skipped_slots", 0))] for r in rows]
        return table(cells, ["id", "name", "type", "expression (UTC)", "next slot", "last job", "skipped"])
    cells = [[r["watch_id"], r.get("name") or "", r["source"], f"{r['container']}/{r['prefix']}", r["job_type"],
              preview(r.get("options") or {}, 50)] for r in rows]
    return table(cells, ["id", "name", "source", "container/prefix", "type", "options"])

"""Markdown of ``bench_engine.py``'s summary: the goals first, then each section's tables."""
from __future__ import annotations

from typing import Any

from bench_common import markdown_table

GOALS = {"table_per_task": ("<=", 1.5), "all_per_task": ("<=", 3.5), "e2e_ratio": (">=", 0.6),
         "fanout_ratio": ("<=", 1.1), "status_idle_ms": ("<=", 100), "status_requests": ("<=", 3)}


def markdown(summary: dict[str, Any]) -> str:
    """The results as Markdown."""
    m = summary["machine"]
    out = [f"## Engine benchmark: {m['date']}, {m['nproc']} CPUs, Python {m['python']}, Azurite {m['azurite']}, "
           f"load {m['loadavg_start']} -> {m.get('loadavg_end')}, {m.get('wall_s')} s", ""]
    out += goals(summary)
    out += raw_table(summary.get("raw"))
    out += requests_tables(summary.get("requests"))
    out += fanout_table(summary.get("fanout"))
    out += scale_tables(summary.get("scale"))
    return "\n".join(out)


def _met(name: str, value: Any) -> str:
    if value is None:
        return "-"
    op, goal = GOALS[name]
    return "met" if (value <= goal if op == "<=" else value >= goal) else "**NOT met**"


def goals(summary: dict[str, Any]) -> list[str]:
    """Issue 11's goals next to this run's numbers."""
    r = summary.get("ratios", {})
    fan = summary.get("fanout") if isinstance(summary.get("fanout"), dict) else {}
    rows = []
    if "table_per_task" in r:
        rows += [[f"table requests per task (hello_world, {r['at_tasks']} tasks, submit to end)",
                  f"**{r['table_per_task']}**", "<= 1.5", _met("table_per_task", r["table_per_task"])],
                 ["all storage requests per task (table + queue + blob, delivery included)",
                  f"**{r['all_per_task']}**", "<= 3.5", _met("all_per_task", r["all_per_task"])]]
    if "e2e_ratio" in r:
        rows.append([f"end to end: {r['e2e_tasks_per_s']} tasks/s ÷ raw queue {r['raw_send_receive_delete_per_s']} "
                     "msg/s (send+receive+delete)", f"**{r['e2e_ratio']}**", ">= 0.6", _met("e2e_ratio", r["e2e_ratio"])])
    if "fanout_ratio" in r:
        f, raw = fan["fanout"], fan["raw_sends"]
        rows.append([f"fan-out of {f['tasks']} tasks {f['seconds']} s ÷ {raw['messages']} raw sends with "
                     f"{raw['threads']} threads {raw['seconds']} s", f"**{r['fanout_ratio']}**", "<= 1.1",
                     _met("fanout_ratio", r["fanout_ratio"])])
    if "status_idle_ms" in r:
        rows += [["status of the scale job (idle host, in process), p50 ms", f"**{r['status_idle_ms']}**", "<= 100",
                  _met("status_idle_ms", r["status_idle_ms"])],
                 ["storage requests per status call", f"**{r['status_requests']}**", "<= 3",
                  _met("status_requests", r["status_requests"])]]
    if "scale_e2e_ratio" in r:
        rows.append([f"scale end to end: {r['scale_e2e_tasks_per_s']} tasks/s ÷ raw queue msg/s",
                     f"**{r['scale_e2e_ratio']}**", ">= 0.6", _met("e2e_ratio", r["scale_e2e_ratio"])])
    if not rows:
        return []
    return ["### Goals (issue 11), each ratio measured in this run", "",
            *markdown_table(["measure", "this run", "goal", ""], rows)]


def _failed(section: Any) -> list[str] | None:
    if section is None:
        return []
    if isinstance(section, dict) and "error" in section:
        return [f"**failed:** `{section['error']}`", ""]
    return None


def raw_table(section: Any) -> list[str]:
    """The raw queue runs."""
    if (failed := _failed(section)) is not None:
        return failed
    rows = [[i + 1, r["messages"], r["threads"], r["receive_batch"], r["send_per_s"], r["receive_delete_per_s"],
             f"**{r['send_receive_delete_per_s']}**", r["requests_per_message"]] for i, r in enumerate(section)]
    return ["### 1. Raw queue on the same Azurite (before and after the engine runs; the mean is the baseline)", "",
            *markdown_table(["run", "messages", "threads", "receive batch", "send/s", "receive+delete/s",
                             "send+receive+delete msg/s", "requests/msg"], rows)]


def _status(run: dict[str, Any]) -> str:
    """The job's status, flagged when its result does not count every task."""
    return run["status"] + ("" if run["result_task_count_ok"] else " (**result count wrong**)")


def _anomalies(run: dict[str, Any]) -> str:
    levels = {k: sum(h["levels"].get(k, 0) for h in run["per_host"]) for k in ("WARNING", "ERROR")}
    parts = [f"{k} {v}" for k, v in run["anomalies"].items()] + [f"{k} lines {v}" for k, v in levels.items() if v]
    return ", ".join(parts) or "none"


def requests_tables(section: Any) -> list[str]:
    """Requests per task at each n, by kind, and the largest run's hosts and timeline."""
    if (failed := _failed(section)) is not None:
        return failed
    hosts = section[0]["hosts"]
    out = [f"### 2. Storage requests per task: hello_world on {hosts} local hosts, submit to end", ""]
    rows = [[r["params"]["n"], r["tasks"], _status(r), r["seconds"], r["tasks_per_s"], r["per_task"]["table"],
             r["per_task"]["queue"], r["per_task"]["blob"], f"**{r['per_task']['all']}**", r["engine_per_task"],
             r["delivery_per_task"], r["status_idle"]["requests_per_call"], r["status_idle"]["ms"].get("p50"),
             _anomalies(r)] for r in section]
    out += markdown_table(["n", "tasks", "status", "s", "tasks/s", "table/task", "queue/task", "blob/task",
                           "all/task", "engine/task", "delivery/task", "requests/status call", "status ms (idle)",
                           "anomalies (host logs)"], rows)
    kinds = sorted({k for r in section for k in r["per_task_by_kind"]})
    out += markdown_table(["requests per task, by kind", *(f"n={r['params']['n']}" for r in section)],
                          [[k, *(r["per_task_by_kind"].get(k, 0) for r in section)] for k in kinds])
    out += ["engine = the app's own requests (its REQUEST_COUNTER); delivery = the host's receives, deletes and "
            "lease renewals. `table.get` is a point read, `table.query` a range or filter query, `table.batch` an "
            "entity-group transaction.", ""]
    out += hosts_and_timeline(section[-1])
    return out


def hosts_and_timeline(run: dict[str, Any]) -> list[str]:
    """Per-host split, the job's timeline and any log excerpts of one run."""
    label = f"{run['job_type']} {run['tasks']} tasks"
    rows = [[f"host{h['host']}", h["tasks_started"], f"{h['share']:.0%}", h["invocation_ms"].get("p50"),
             h["invocation_ms"].get("p95"), h["levels"].get("WARNING", 0), h["levels"].get("ERROR", 0)]
            for h in run["per_host"]]
    out = markdown_table([f"host ({label})", "tasks started", "share", "invocation p50 ms", "p95 ms", "warnings",
                          "errors"], rows)
    out += markdown_table([f"timeline ({label}, host logs)", "first s after submit", "last s"],
                          [[t["event"], t["first_s"], t["last_s"]] for t in run["timeline"]])
    if run.get("log_excerpts"):
        out += ["Host log warnings and errors (first of each host):", "", "```",
                *[x for e in run["log_excerpts"] for x in (e, "")], "```", ""]
    return out


def fanout_table(section: Any) -> list[str]:
    """Fan-out against raw sends."""
    if (failed := _failed(section)) is not None:
        return failed
    f, raw = section["fanout"], section["raw_sends"]
    req = f["requests"]
    rows = [[f"`engine.run_stage`, hello_world stage 1 ({f['tasks']} tasks, FANOUT_THREADS {f['fanout_threads']}, "
             f"{f['workers_used']} batches in parallel)", f"**{f['seconds']}**",
             f"setup {f['setup_s']} s, rows + sends {f['rows_and_sends_s']} s", f["runs_s"]],
            [f"{raw['messages']} raw sends, {raw['threads']} threads", f"**{raw['seconds']}**", "", raw["runs_s"]],
            ["ratio", f"**{section['ratio']}**", "goal <= 1.1", ""]]
    return ["### 3. Fan-out (in process, median of interleaved runs)", "",
            *markdown_table(["run", "s", "split", "all runs s"], rows),
            f"fan-out requests: {', '.join(f'{k} {v}' for k, v in req.items())}; messages queued {f['messages_queued']}", ""]


def scale_tables(section: Any) -> list[str]:
    """The 100,000-task stage and the end-to-end run."""
    if (failed := _failed(section)) is not None:
        return failed
    st, e2e = section["stage"], section["e2e"]
    s = st["samples"]
    idle = st["status_idle"]
    sweeps = s["sweeps"]
    rows = [["status", _status(st)],
            ["fan-out: submit -> `stage_dispatched` (all rows and messages)",
             f"**{st['fanout_s']} s** ({st['fanout_sends_per_s']} tasks/s; chunk send ms p50 "
             f"{st['chunk_send_ms'].get('p50')}, max {st['chunk_send_ms'].get('max')})"],
            ["submit -> job finished", f"{st['seconds']} s, **{st['tasks_per_s']} tasks/s**"],
            ["requests per task (table / queue / all)",
             f"{st['per_task']['table']} / {st['per_task']['queue']} / {st['per_task']['all']}"],
            ["status while running (in process)",
             f"{s['status_ms'].get('count')} calls: p50 {s['status_ms'].get('p50')} ms, p95 {s['status_ms'].get('p95')}, "
             f"max {s['status_ms'].get('max')}; at most {s['status_requests_max']} requests per call"],
            ["status on idle hosts (hosts stopped)",
             f"p50 **{idle['ms'].get('p50')} ms**, {idle['requests_per_call']} requests per call"],
            ["sweeper pass while running (in process)",
             f"{len(sweeps)} passes: p50 {s['sweep_ms'].get('p50')} ms, max {s['sweep_ms'].get('max')}; at most "
             f"{s['sweep_requests_max']} requests; actions {[x['actions'] for x in sweeps if x['actions']] or 'none'}"],
            ["anomalies (host logs)", _anomalies(st)],
            [f"end to end noop {e2e['tasks']} tasks", f"{_status(e2e)}, {e2e['seconds']} s, **{e2e['tasks_per_s']} "
             f"tasks/s**, requests per task {e2e['per_task']['all']} (table {e2e['per_task']['table']}), anomalies "
             f"{_anomalies(e2e)}"]]
    return [f"### 4. Scale: noop {st['tasks']} tasks on {st['hosts']} hosts", "",
            *markdown_table(["measure", "value"], rows), *hosts_and_timeline(st)]

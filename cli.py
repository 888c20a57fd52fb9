#!/usr/bin/env python3
"""geoetl command-line client: submit jobs, watch them run, inspect, retry and cancel them.

Talks to the HTTP API only, so it works the same against ``local_host.py``/``func start`` and Azure
(``--url https://<app>.azurewebsites.net/api --key <function key>``). Exit codes: 0 success or job completed,
1 job failed or cancelled, 2 usage, connection or API error, 3 ``--timeout`` reached while waiting,
130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any
from urllib.parse import quote

import cli_render as render
from cli_client import (  # noqa: F401  (re-exported: the CLI's public names)
    DEFAULT_URL, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_OK, EXIT_TIMEOUT, KEY_HEADER, POLL_GRACE_S,
    POLL_S, REQUEST_TIMEOUT_S, CliError, Client, KeySession, base_url, is_loopback, parse_params, reason,
)

def colors(out) -> tuple[bool, bool, bool]:
    """(tty, color, unicode) for ``out``: colour only on a terminal and without NO_COLOR or TERM=dumb."""
    tty = out.isatty() and os.environ.get("TERM") != "dumb"
    color = tty and "NO_COLOR" not in os.environ
    unicode = (getattr(out, "encoding", "") or "").lower().replace("-", "") == "utf8"
    return tty, color, unicode


def watch(client: Client, job_id: str, timeout: float | None, as_json: bool) -> int:
    """Follow a job until it ends (live bars, then a summary); its exit code."""
    tty, color, unicode = colors(sys.stdout)
    view = render.LiveView(sys.stdout, tty, color, unicode, shutil.get_terminal_size().columns)
    start = last_ok = time.monotonic()
    while True:
        try:
            status = client.status(job_id)
            last_ok = time.monotonic()
        except CliError as exc:
            if (exc.status is not None and exc.status < 500) or time.monotonic() - last_ok > POLL_GRACE_S:
                raise
            print(f"warning: {exc.message}; retrying", file=sys.stderr)
            time.sleep(2)
            continue
        if not as_json:
            view.update(status, client.now())
        if status["status"] in render.TERMINAL:
            break
        if timeout is not None and time.monotonic() - start > timeout:
            if as_json:
                emit(status)
            raise CliError(f"still {status['status']} after {timeout:g}s (--timeout); the job goes on: "
                           f"cli.py wait {job_id}", code=EXIT_TIMEOUT)
        time.sleep(POLL_S)
    if as_json:
        emit(status)
    else:
        print()
        print("\n".join(render.summary_lines(status, client.now(), color)))
        if status["status"] == "failed":
            print(f"  retry the failed tasks with: cli.py retry {job_id}")
    return EXIT_OK if status["status"] == "completed" else EXIT_JOB_FAILED


def emit(body: Any) -> None:
    """Raw JSON on stdout."""
    print(json.dumps(body, indent=2))


def cmd_submit(client: Client, args) -> int:
    """POST jobs/submit/{type}; with --wait, watch it."""
    params = parse_params(args.params, args.param_file)
    submitted = client.call("POST", f"jobs/submit/{quote(args.job_type, safe='')}",
                            params={"callback_url": args.callback_url}, body=params)
    job_id = args.job_id = submitted["job_id"]
    if args.json and not args.wait:
        emit(submitted)
    elif not args.json:
        print(job_id)
        state = "new job" if submitted.get("created") else "existing job (same parameters)"
        print(f"{submitted['job_type']}: {state}, {submitted['status']}; status: {submitted['status_url']}")
        if submitted.get("hint"):
            print(f"hint: {submitted['hint']}", file=sys.stderr)
    return watch(client, job_id, args.timeout, args.json) if args.wait else EXIT_OK


def cmd_status(client: Client, args) -> int:
    """GET jobs/status/{id}: stages with bars, then the summary."""
    status = client.status(args.job_id)
    if args.json:
        emit(status)
        return EXIT_OK
    _, color, unicode = colors(sys.stdout)
    now = client.now()
    lines = render.summary_lines(status, now, color, stages=False)
    bars = ["  " + render.stage_line(s, status["total_stages"], now, color=color, unicode=unicode)
            for s in status["stages"]]
    print("\n".join(lines[:1] + bars + lines[1:]))
    return EXIT_OK


def pages(client: Client, path: str, key: str, params: dict, limit: int | None, follow: bool) -> tuple[list, Any]:
    """Items from a paged listing: one page, or every page with ``follow``, at most ``limit``."""
    items, token = [], None
    while True:
        page = client.call("GET", path, params={**params, "continuation": token})
        items += page[key]
        token = page.get("continuation")
        if not token or not follow or (limit is not None and len(items) >= limit):
            return (items[:limit] if limit else items), token


def cmd_list(client: Client, args) -> int:
    """GET jobs: newest first."""
    jobs, more = pages(client, "jobs", "jobs", {"status": args.status, "job_type": args.type, "limit": args.limit},
                       None, args.all)
    if args.json:
        emit({"jobs": jobs, "continuation": more})
        return EXIT_OK
    rows = [[j["updated_at"][:19].replace("T", " "), j["status"], j["job_type"],
             f"{j['stage']}/{j['total_stages']}", j["job_id"]] for j in jobs]
    print("\n".join(render.table(rows, ["updated", "status", "type", "stage", "job id"])) if rows else "no jobs")
    if more:
        print(f"(more jobs: --all, or --limit above {args.limit})", file=sys.stderr)
    return EXIT_OK


def cmd_tasks(client: Client, args) -> int:
    """GET jobs/{id}/tasks: every page unless --limit."""
    tasks, _ = pages(client, f"jobs/{quote(args.job_id, safe='')}/tasks", "tasks",
                     {"stage": args.stage, "status": args.status, "limit": min(args.limit or 1000, 1000)},
                     args.limit, True)
    if args.json:
        emit({"tasks": tasks})
        return EXIT_OK
    rows = [[t["task_id"], t["task_type"], t["status"], str(t["attempts"]), render.seconds(t.get("duration_s")),
             render.preview(t.get("error_details") or t.get("last_error") or "", 70)] for t in tasks]
    print("\n".join(render.table(rows, ["task id", "type", "status", "attempts", "duration", "error"])))
    print(f"{len(tasks)} tasks", file=sys.stderr)
    return EXIT_OK


def cmd_task(client: Client, args) -> int:
    """GET jobs/{id}/tasks/{task_id}."""
    task = client.call("GET", f"jobs/{quote(args.job_id, safe='')}/tasks/{quote(args.task_id, safe='')}")
    if args.json:
        emit(task)
        return EXIT_OK
    for key, value in task.items():
        if key in ("parameters", "result") and value is not None:
            print(f"{key}:\n  " + json.dumps(value, indent=2).replace("\n", "\n  "))
        elif value is not None:
            print(f"{key}: {value}")
    return EXIT_OK


def cmd_action(client: Client, args) -> int:
    """POST jobs/{id}/retry or /cancel; retry --wait watches the job again."""
    status = client.call("POST", f"jobs/{quote(args.job_id, safe='')}/{args.command}")
    if getattr(args, "wait", False):
        return watch(client, args.job_id, args.timeout, args.json)
    if args.json:
        emit(status)
    else:
        done = "retrying its failed tasks" if args.command == "retry" else "cancelled"
        print(f"job {args.job_id}: {done}; now {status['status']}")
    return EXIT_OK


def cmd_types(client: Client, args) -> int:
    """GET job-types: each type's stages and parameters."""
    body = client.call("GET", "job-types")
    if args.json:
        emit(body)
        return EXIT_OK
    print("\n\n".join("\n".join(render.job_type_lines(t)) for t in body["job_types"]))
    return EXIT_OK


def cmd_health(client: Client, args) -> int:
    """GET health: each check, queue depths, versions; exit 2 when unhealthy."""
    try:
        body, unhealthy = client.call("GET", "health"), None
    except CliError as exc:
        if exc.status != 503 or not isinstance(exc.body, dict):
            raise
        body, unhealthy = exc.body, exc
    if args.json:
        emit(body)
    else:
        print("\n".join(render.health_lines(body)))
    if unhealthy:
        raise CliError(f"unhealthy: failing {', '.join(body.get('failing', [])) or '?'}")
    return EXIT_OK


def cmd_wait(client: Client, args) -> int:
    """Watch an existing job until it ends."""
    return watch(client, args.job_id, args.timeout, args.json)


def cmd_triggers(client: Client, args) -> int:
    """schedules / watches (issue #13): add, list, delete."""
    kind = args.command
    if args.action == "delete":
        answer = client.call("DELETE", f"{kind}/{quote(args.id, safe='')}")
        rows = None
    elif args.action == "add":
        params = parse_params(args.params, args.param_file)
        body = {"job_type": args.job_type, "name": args.name, **(
            {"expression": args.expression, "parameters": params} if kind == "schedules"
            else {"container": args.container, "prefix": args.prefix, "options": params})}
        answer = client.call("POST", kind, body={k: v for k, v in body.items() if v is not None})
        rows = [answer]
    else:
        answer = client.call("GET", kind)
        rows = answer[kind]
    if args.json:
        emit(answer)
    elif rows is None:
        print(f"deleted {answer['deleted']}")
    else:
        print("\n".join(render.trigger_lines(kind, rows)) if rows else f"no {kind}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    """Subcommands; the global options are accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help=f"API root (env GEOETL_URL, default {DEFAULT_URL})")
    common.add_argument("--key", default=argparse.SUPPRESS, help="function key, sent as x-functions-key "
                        "(env GEOETL_KEY)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON, no progress bars")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                        help="give up waiting after this long (exit 3; the job goes on)")
    top = argparse.ArgumentParser(prog="cli.py", parents=[common], description=__doc__.split("\n\n")[0],
                                  epilog="exit codes: 0 ok/completed, 1 job failed or cancelled, 2 usage, "
                                         "connection or API error, 3 --timeout reached")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str, job: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        if job:
            p.add_argument("job_id", metavar="ID", help="job id")
        return p

    p = add("submit", cmd_submit, "submit a job: TYPE key=value ... (values are JSON when they parse)")
    p.add_argument("job_type", metavar="TYPE")
    p.add_argument("params", nargs="*", metavar="key=value", help='e.g. n=20 fail_indices=[1,2] blob=a/b.tif')
    p.add_argument("--param-file", metavar="FILE.json", help="parameters as a JSON object ('-' for stdin)")
    p.add_argument("--wait", action="store_true", help="watch the job until it ends")
    p.add_argument("--callback-url", metavar="URL", help="where the API POSTs the final status (signed)")
    add("status", cmd_status, "a job's status, stages and result", job=True)
    p = add("list", cmd_list, "jobs, newest first")
    p.add_argument("--status", help="queued, processing, completed, failed or cancelled")
    p.add_argument("--type", help="job type")
    p.add_argument("--limit", type=int, default=20, help="jobs per page (default 20)")
    p.add_argument("--all", action="store_true", help="follow every page")
    p = add("tasks", cmd_tasks, "a job's tasks", job=True)
    p.add_argument("--stage", type=int)
    p.add_argument("--status")
    p.add_argument("--limit", type=int, help="show at most this many (default all)")
    p = add("task", cmd_task, "one task: status, attempts, timings, error, parameters, result", job=True)
    p.add_argument("task_id", metavar="TASK_ID")
    p = add("retry", cmd_action, "re-run a failed job's failed tasks", job=True)
    p.add_argument("--wait", action="store_true", help="watch the job until it ends")
    add("cancel", cmd_action, "cancel a job", job=True)
    add("types", cmd_types, "job types: stages and parameters")
    add("health", cmd_health, "storage, database, queue depths, versions")
    add("wait", cmd_wait, "watch a job until it ends", job=True)
    for kind, what in (("schedules", "jobs on a cadence: add TYPE 'SEC MIN HOUR DAY MONTH DOW' key=value ..."),
                       ("watches", "a job per new raster blob: add CONTAINER TYPE key=value ... [--prefix P]")):
        actions = add(kind, cmd_triggers, f"{kind}: {what}").add_subparsers(dest="action", required=True,
                                                                            metavar="ACTION")
        p = actions.add_parser("add", parents=[common], help=f"create one of the {kind}")
        if kind == "watches":
            p.add_argument("container")
            p.add_argument("--prefix", default="", help="only blobs whose names start with this")
        p.add_argument("job_type", metavar="TYPE")
        if kind == "schedules":
            p.add_argument("expression", help="NCRONTAB, six fields, UTC: e.g. '0 0 2 * * *' (02:00 daily)")
        p.add_argument("params", nargs="*", metavar="key=value", help="the job type's parameters")
        p.add_argument("--param-file", metavar="FILE.json", help="parameters as a JSON object ('-' for stdin)")
        p.add_argument("--name", help="a label for people")
        actions.add_parser("list", parents=[common], help=f"every one of the {kind}")
        actions.add_parser("delete", parents=[common], help=f"delete one of the {kind}").add_argument("id")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code."""
    args = parser().parse_args(argv)
    args.url = getattr(args, "url", None) or os.environ.get("GEOETL_URL") or DEFAULT_URL
    args.key = getattr(args, "key", None) or os.environ.get("GEOETL_KEY")
    args.json = getattr(args, "json", False)
    args.timeout = getattr(args, "timeout", None)
    try:
        return args.func(Client(args.url, args.key), args)
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        job = getattr(args, "job_id", None)
        print("\ninterrupted" + (f"; the job goes on: cli.py wait {job}" if job else ""), file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

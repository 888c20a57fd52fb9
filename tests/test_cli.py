"""cli.py: end to end as a subprocess against a real local host over a private Azurite; rendering and
parameter parsing as pure functions."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import requests
from support import fresh_settings, settings_env
from host_proc import HostProcess

import cli
import cli_render as render
from models import make_task_id
from repositories import Repositories

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, url: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``cli.py [--url URL] args...`` as a subprocess; stdout is a pipe (not a TTY)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GEOETL_URL", "GEOETL_KEY")}
    cmd = [sys.executable, str(ROOT / "cli.py")] + (["--url", url] if url else []) + list(args)
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                          env={**env, "NO_COLOR": "1"}, cwd=ROOT)


@pytest.fixture(scope="module")
def host(azurite, tmp_path_factory):
    """One local host for the module, over fresh tables and queues."""
    settings = fresh_settings(azurite.connection_string)
    Repositories(settings).ensure()
    proc = HostProcess(settings_env(settings), tmp_path_factory.mktemp("cli") / "host.log").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def completed(host):
    """``submit hello_world n=20 --wait``: the finished process and the job id it printed first."""
    result = run("submit", "hello_world", "n=20", "message=cli", "--wait", url=host.url)
    return result, result.stdout.splitlines()[0]


@pytest.fixture(scope="module")
def failed(host):
    """``submit hello_world n=3 fail_indices=[1] --wait``: the finished process and its job id."""
    result = run("submit", "hello_world", "n=3", "fail_indices=[1]", "--wait", url=host.url)
    return result, result.stdout.splitlines()[0]


def test_submit_wait_prints_progress_and_summary(completed, host):
    result, job_id = completed
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(job_id) == 64 and f"{host.url}/jobs/status/{job_id}" in result.stdout
    out = result.stdout
    assert "hello_world job completed in" in out
    assert "40 total: 40 completed, 0 failed" in out
    assert "greetings: 20 items, first: cli from" in out and "task_count: 40" in out
    assert "hello_worlds" in out and "worlds_reply" in out and "20/20 done" in out
    assert "\x1b[" not in out  # not a TTY: plain lines, no cursor movement
    assert out.count("20/20 done") <= 4  # one line per change, not one per poll


def test_failing_job_exits_1_and_shows_the_task_error(failed):
    result, job_id = failed
    assert result.returncode == 1, result.stdout + result.stderr
    task_id = make_task_id(job_id, 1, 1)
    assert "hello_world job failed in" in result.stdout
    assert f"{task_id} (failed, 1 attempt): task {task_id} was asked to fail (fail_indices)" in result.stdout
    assert f"cli.py retry {job_id}" in result.stdout


def test_json_status_equals_the_api(completed, host):
    _, job_id = completed
    result = run("--json", "status", job_id, url=host.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == requests.get(f"{host.url}/jobs/status/{job_id}", timeout=10).json()
    after = run("status", job_id, "--json", url=host.url)  # global options after the subcommand too
    assert json.loads(after.stdout)["status"] == "completed"


def test_status_list_types_tasks_task(completed, failed, host):
    _, job_id = completed
    _, failed_id = failed
    status = run("status", job_id, url=host.url)
    assert status.returncode == 0 and "hello_world job completed" in status.stdout
    listed = run("list", url=host.url)
    assert listed.returncode == 0 and job_id in listed.stdout and failed_id in listed.stdout
    only_failed = run("--json", "list", "--status", "failed", "--all", url=host.url)
    assert [j["job_id"] for j in json.loads(only_failed.stdout)["jobs"]] == [failed_id]
    types = run("types", url=host.url)
    assert types.returncode == 0 and "hello_world: " in types.stdout and "process_raster: " in types.stdout
    assert "integer 1..1000" in types.stdout
    tasks = run("tasks", job_id, url=host.url)
    rows = [line for line in tasks.stdout.splitlines() if line.startswith(job_id[:12])]
    assert tasks.returncode == 0 and len(rows) == 40 and all("completed" in r for r in rows)
    assert len(json.loads(run("--json", "tasks", job_id, "--stage", "2", url=host.url).stdout)["tasks"]) == 20
    task = run("task", failed_id, make_task_id(failed_id, 1, 1), url=host.url)
    assert task.returncode == 0 and "status: failed" in task.stdout and "asked to fail" in task.stdout


def test_cancel_of_a_finished_job_exits_2_with_the_api_message(completed, host):
    _, job_id = completed
    api = requests.post(f"{host.url}/jobs/{job_id}/cancel", timeout=10)
    assert api.status_code == 409
    result = run("cancel", job_id, url=host.url)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {api.json()['message']}"


def test_bad_parameter_exits_2_naming_the_field(host):
    result = run("submit", "hello_world", "n=0", url=host.url)
    assert result.returncode == 2
    assert "error: invalid parameters for hello_world: n: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_unknown_job_and_wait_timeout(host):
    assert "no job with id 'nope'" in run("status", "nope", url=host.url).stderr
    job_id = run("submit", "hello_world", "n=2", "sleep_ms=5000", url=host.url).stdout.splitlines()[0]
    waited = run("wait", job_id, "--timeout", "0.5", url=host.url)
    assert waited.returncode == 3 and f"cli.py wait {job_id}" in waited.stderr
    cancelled = run("cancel", job_id, url=host.url)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout


def test_unreachable_url_exits_2_readably():
    result = run("health", url="http://127.0.0.1:9/api")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: cannot reach http://127.0.0.1:9/api: Connection refused"


def test_usage_errors_exit_2():
    assert run().returncode == 2
    assert run("submit", "hello_world", "n").returncode == 2
    assert "is not key=value" in run("submit", "hello_world", "n", url="http://127.0.0.1:9/api").stderr


def test_executable_with_a_shebang():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([str(ROOT / "cli.py"), "--help"], check=False, capture_output=True, text=True, env=env,
                            timeout=30)
    assert result.returncode == 0 and "submit" in result.stdout and "exit codes" in result.stdout


class _Recorder(BaseHTTPRequestHandler):
    """Answers 401 with no body (what Azure does without a key) and records the headers it got."""

    seen: ClassVar[list[dict]] = []

    def do_GET(self):
        self.seen.append(dict(self.headers))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_key_header_and_non_json_errors():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run("--key", "s3cret", "types", url=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert result.returncode == 2
    assert _Recorder.seen[-1]["x-functions-key"] == "s3cret"
    assert f"HTTP 401 Unauthorized from GET http://127.0.0.1:{server.server_port}/api/job-types" in result.stderr
    assert "--key" in result.stderr


def test_the_key_is_not_sent_over_plain_http_beyond_loopback():
    result = run("--key", "s3cret", "types", url="http://geoetl.example.com")
    assert result.returncode == 2 and result.stdout == ""
    assert "refusing to send the function key over plain http to geoetl.example.com" in result.stderr
    for url in ("http://10.0.0.8:7071", "http://localhost.example.com", "http://127.0.0.1.nip.io"):
        with pytest.raises(cli.CliError, match="plain http"):
            cli.Client(url, "s3cret")
    for url in ("https://app.azurewebsites.net", "http://localhost:7071", "http://127.0.0.1:7071", "http://[::1]:7071"):
        assert cli.Client(url, "s3cret").session.headers["x-functions-key"] == "s3cret"
    assert "x-functions-key" not in cli.Client("http://geoetl.example.com").session.headers  # no key: fine


class _Redirector(BaseHTTPRequestHandler):
    """``/api/job-types`` redirects to ``target`` (another server, or ``/api/same`` here); the rest answers
    JSON; every request's path and key are recorded."""

    seen: ClassVar[list[tuple[str, str | None]]] = []
    target: ClassVar[str] = ""

    def do_GET(self):
        self.seen.append((f"{self.server.server_port}{self.path}", self.headers.get("x-functions-key")))
        if self.path == "/api/job-types":
            self.send_response(302)
            self.send_header("Location", self.target)
            body = b""
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            body = b'{"job_types": []}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_key_is_dropped_on_a_redirect_to_another_host():
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Redirector) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    here, there = (s.server_port for s in servers)
    try:
        _Redirector.target = f"http://localhost:{there}/api/elsewhere"  # another host name, another port
        assert cli.Client(f"http://127.0.0.1:{here}", "s3cret").call("GET", "job-types") == {"job_types": []}
        assert _Redirector.seen == [(f"{here}/api/job-types", "s3cret"), (f"{there}/api/elsewhere", None)]
        _Redirector.seen.clear()
        _Redirector.target = "/api/same"  # same host: the key follows
        cli.Client(f"http://127.0.0.1:{here}", "s3cret").call("GET", "job-types")
        assert _Redirector.seen == [(f"{here}/api/job-types", "s3cret"), (f"{here}/api/same", "s3cret")]
    finally:
        for server in servers:
            server.shutdown()


def test_parse_params():
    params = cli.parse_params(["n=20", "fail_indices=[1,2]", 'datetime="2020-01-01T00:00:00Z"', "blob=a/b.tif",
                               "flag=true", "x=NaN", "empty="], None)
    assert params == {"n": 20, "fail_indices": [1, 2], "datetime": "2020-01-01T00:00:00Z", "blob": "a/b.tif",
                      "flag": True, "x": "NaN", "empty": ""}
    with pytest.raises(cli.CliError, match="given twice"):
        cli.parse_params(["n=1", "n=2"], None)


def test_parse_params_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"n": 5, "message": "m"}')
    assert cli.parse_params(["n=6"], str(path)) == {"n": 6, "message": "m"}
    path.write_text("[1]")
    with pytest.raises(cli.CliError, match="JSON object"):
        cli.parse_params([], str(path))


def test_base_url():
    assert cli.base_url("https://app.azurewebsites.net/") == "https://app.azurewebsites.net/api"
    assert cli.base_url("http://localhost:7071/api/") == "http://localhost:7071/api"
    with pytest.raises(cli.CliError):
        cli.base_url("localhost:7071")


# --- rendering, no server --------------------------------------------------------------------------------

T0 = datetime.fromisoformat("2026-01-01T00:00:00Z")


def _stage(number, name, status, total=0, completed=0, failed=0, processing=0, started=None, ended=None):
    tasks = {"total": total, "queued": total - completed - failed - processing, "processing": processing,
             "completed": completed, "failed": failed, "cancelled": 0}
    stage = {"stage": number, "name": name, "status": status, "tasks": tasks, "attempts": completed + failed}
    if started is not None:
        stage["started_at"] = (T0 + timedelta(seconds=started)).isoformat()
    if ended is not None:
        stage.update(ended_at=(T0 + timedelta(seconds=ended)).isoformat(), duration_s=ended - started)
    return stage


def _status(status="processing", stage=2, stages=None, **extra):
    stages = stages or [_stage(1, "hello_worlds", "completed", 20, 20, started=1, ended=5),
                        _stage(2, "worlds_reply", "processing", 20, 10, processing=4, started=5)]
    tasks = {k: sum(s["tasks"][k] for s in stages) for k in stages[0]["tasks"]}
    return {"job_id": "ab" * 32, "job_type": "hello_world", "status": status, "stage": stage, "total_stages": 2,
            "stage_name": "worlds_reply", "parameters": {"n": 20}, "tasks": tasks, "stages": stages,
            "progress": 75.0, "attempts": 30, "retries": 0, "recent_errors": [],
            "created_at": T0.isoformat(), "updated_at": (T0 + timedelta(seconds=5)).isoformat(), **extra}


def test_progress_lines_bar_counts_rate_elapsed():
    lines = render.progress_lines(_status(), now=T0 + timedelta(seconds=10), width=10)
    assert lines == [
        "job abababababab hello_world: processing  stage 2/2  75%  10.0s",
        "  1/2 hello_worlds     [##########] 20/20 done  5.0/s 4.0s  completed",
        "  2/2 worlds_reply     [#####-----] 10/20 done 4 running  2.0/s 5.0s  processing",
    ]


def test_progress_lines_not_started_failed_and_colour():
    status = _status(stages=[_stage(1, "hello_worlds", "failed", 3, 2, 1, started=0, ended=2),
                             _stage(2, "worlds_reply", "queued")], status="failed", stage=1)
    lines = render.progress_lines(status, now=T0 + timedelta(seconds=9), width=4, color=True, unicode=True)
    assert "[████] 2/3 done \x1b[31m1 failed\x1b[0m  1.5/s 2.0s  \x1b[31mfailed\x1b[0m" in lines[1]
    assert lines[2].endswith("[░░░░] not started  - -  \x1b[2mqueued\x1b[0m")
    assert lines[0].endswith("75%  5.0s")  # a terminal job: elapsed is created -> updated
    assert render.fit(lines[1], 20) == render.ANSI.sub("", lines[1])[:19] + "…"


def test_summary_lines_completed_and_failed():
    done = _status("completed", result_data={"greetings": ["hi from 0!"] * 20, "task_count": 40})
    text = "\n".join(render.summary_lines(done, now=T0 + timedelta(seconds=60)))
    assert text.startswith("hello_world job completed in 5.0s")
    assert "greetings: 20 items, first: hi from 0!" in text and "task_count: 40" in text
    failed = _status("failed", error_details="stage 1 failed: 1 of 3 tasks failed",
                     recent_errors=[{"task_id": "t1", "status": "failed", "attempts": 2, "error": "boom"}])
    text = "\n".join(render.summary_lines(failed, now=T0))
    assert "error     stage 1 failed: 1 of 3 tasks failed" in text
    assert "t1 (failed, 2 attempts): boom" in text


def test_live_view_plain_prints_one_line_per_change():
    out = io.StringIO()
    view = render.LiveView(out, tty=False)
    first = _status(stages=[_stage(1, "hello_worlds", "processing", 20, 5, started=0),
                            _stage(2, "worlds_reply", "queued")], stage=1)
    view.update(first, T0 + timedelta(seconds=1))
    view.update(first, T0 + timedelta(seconds=2))  # nothing changed: nothing printed
    later = _status(stages=[_stage(1, "hello_worlds", "processing", 20, 9, started=0),
                            _stage(2, "worlds_reply", "queued")], stage=1)
    view.update(later, T0 + timedelta(seconds=3))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("job abababababab")
    assert "5/20 done" in lines[1] and "9/20 done" in lines[2] and "3.0/s" in lines[2]
    assert "worlds_reply" not in out.getvalue()  # not started yet: not shown


def test_live_view_tty_redraws_in_place():
    out = io.StringIO()
    view = render.LiveView(out, tty=True, columns=60)
    view.update(_status(), T0 + timedelta(seconds=6))
    assert "\x1b[3F" not in out.getvalue()
    view.update(_status(), T0 + timedelta(seconds=7))
    second = out.getvalue().split("\x1b[3F", 1)[1]
    assert second.count("\x1b[2K") == 3 and all(len(line) <= 63 for line in second.splitlines())


def test_schema_types():
    defs = {"P": {"enum": ["a", "b"], "type": "string"}}
    assert render.schema_type({"type": "integer", "minimum": 1, "maximum": 9}, defs) == "integer 1..9"
    assert render.schema_type({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
                              defs) == "string (date-time) or null"
    assert render.schema_type({"$ref": "#/$defs/P", "default": "a"}, defs) == "one of a|b"
    assert render.schema_type({"type": "array", "items": {"type": "integer"}}, defs) == "array[integer]"

"""Helpers more than one test file uses: fresh storage names, submitting and running jobs, waiting,
taking queue messages, a loopback receiver for webhooks and exporters, a loopback file server.

Every test module imports what it needs from here (``from support import ...``); conftest.py holds the
fixtures only, and no test module imports another (tests/test_layout.py checks both). Geospatial data
helpers live in conftest_geo.py, the process-cluster harness for the chaos tests in chaos_cluster.py.
"""
from __future__ import annotations

import re

import base64
import gzip
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import requests
from azure.storage.blob import UserDelegationKey

import api_jobs
from base_controller import TaskHandler
from config import Settings
from controller_factory import TASK_HANDLERS
from models import Status, TaskMessage, decode_job_message, decode_task_message, make_task_id
from queue_driver import QueueDriver
from repositories import Repositories
from repository_clients import StorageClients
from task_manager import Engine


# ----------------------------------------------------------------------------------------- settings
def fresh_settings(connection_string: str, **overrides) -> Settings:
    """Settings with table/queue/container names no other test run uses."""
    run = uuid.uuid4().hex[:10]
    overrides = {"schedules_table": f"sched{run}", "max_clock_skew_s": 0, **overrides}  # tests share one clock
    return Settings(storage_connection_string=connection_string, jobs_queue=f"jobs-{run}",
                    tasks_queue=f"tasks-{run}", jobs_table=f"jobs{run}", tasks_table=f"tasks{run}",
                    payload_container=f"payloads-{run}", **overrides)


WORKER_THREADS = json.loads((Path(__file__).resolve().parents[1] / "local.settings.json.example").read_text(
    encoding="utf-8"))["Values"]["PYTHON_THREADPOOL_THREAD_COUNT"]


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a host process use ``settings`` (and run sync functions on as many
    worker threads as the deployment gives the Python worker)."""
    return {"PYTHON_THREADPOOL_THREAD_COUNT": WORKER_THREADS,
            "AzureWebJobsStorage": settings.storage_connection_string or "",
            "JOBS_QUEUE": settings.jobs_queue, "TASKS_QUEUE": settings.tasks_queue,
            "JOBS_TABLE": settings.jobs_table, "TASKS_TABLE": settings.tasks_table,
            "PAYLOAD_CONTAINER": settings.payload_container, "SCHEDULES_TABLE": settings.schedules_table,
            "COUNTER_SHARDS": str(settings.counter_shards), "MAX_CLOCK_SKEW_S": str(settings.max_clock_skew_s)}


def settings_read_by_code() -> set[str]:
    """Every environment name config.Settings reads (each field's validation aliases but its own name)."""
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias] if alias else [])
        names |= {choice for choice in choices if isinstance(choice, str) and choice != field_name}
    return names


def make_engine(azurite, clients: type[StorageClients] = StorageClients, max_attempts: int | None = None,
                **overrides) -> Engine:
    """An engine over fresh storage names: no backoff, no sweeper grace (unless overridden)."""
    settings = fresh_settings(azurite.connection_string, **{"retry_base_delay_s": 0, "sweeper_grace_s": 0,
                                                             **overrides})
    return Engine(Repositories(settings, clients(settings)).ensure(), max_attempts=max_attempts)


class NoRetryClients(StorageClients):
    """Clients whose SDKs do not retry: a storage fault reaches the caller at once, as it does after the
    SDK's own retries have run out (without their 5 s of backoff)."""

    def _kwargs(self, service: str) -> dict:
        return {**super()._kwargs(service), "retry_total": 0}


# ----------------------------------------------------------------------------- jobs in this process
def submit(engine: Engine, params: dict, callback_url: str | None = None, job_type: str = "hello_world",
           codes: tuple[int, ...] = (202,)) -> str:
    """Submit a job through the API function (a webhook to ``callback_url``); its id (the answer's code must
    be one of ``codes``)."""
    code, body = api_jobs.submit(engine, job_type, json.dumps(params).encode(), "http://test", callback_url)
    assert code in codes, body
    return body["job_id"]


def run_job(engine, job_type: str, params: dict) -> dict:
    """Submit a job and run it to the end with the in-process queue driver; its status body."""
    code, body = api_jobs.submit(engine, job_type, json.dumps(params).encode(), "http://test")
    assert code in (200, 202), body
    QueueDriver(engine).run(body["job_id"], timeout=300)
    return api_jobs.status(engine, body["job_id"])[1]


def upload(engine: Engine, path: Path, blob: str, container: str | None = None, sniff: bool = False) -> str:
    """Upload a file to ``container`` (the input container by default) as a GeoTIFF, or with ``sniff`` as
    image/tiff or text/plain by its first bytes; the blob name."""
    container = container or engine.settings.input_container
    if sniff:
        content_type = "image/tiff" if path.read_bytes()[:2] in (b"II", b"MM") else "text/plain"
        engine.repos.rasters.upload(container, blob, path, content_type)
    else:
        engine.repos.rasters.upload(container, blob, path)
    return blob


def download(engine: Engine, container: str, blob: str, to: Path) -> Path:
    """Download a blob to the file ``to`` (its folders made), or into the folder ``to`` under a fresh name."""
    if to.is_dir():
        to = to / f"dl-{uuid.uuid4().hex[:6]}.tif"
    to.parent.mkdir(parents=True, exist_ok=True)
    engine.repos.rasters.download(container, blob, to)
    return to


def fanned_out(engine: Engine, n: int, message: str = "hello") -> str:
    """A hello_world job with stage 1 fanned out (task messages left in the queue)."""
    job_id = api_jobs.submit(engine, "hello_world", json.dumps({"n": n, "message": message}).encode(), "http://t")[1][
        "job_id"]
    (msg,) = list(engine.repos.jobs_queue.client.receive_messages())
    engine.repos.jobs_queue.client.delete_message(msg)
    engine.run_stage(decode_job_message(msg.content))
    engine.repos.tasks_queue.client.clear_messages()
    return job_id


def take(queue) -> list:
    """Receive and delete every visible message of a queue (the host holds them; deleted when done)."""
    taken = list(queue.client.receive_messages(max_messages=32, messages_per_page=32))
    for m in taken:
        queue.client.delete_message(m)
    return taken


def take_job_message(engine: Engine):
    """Receive and delete the one jobs-queue message; decoded."""
    (msg,) = take(engine.repos.jobs_queue)
    return decode_job_message(msg.content)


def take_task_message(engine: Engine) -> TaskMessage:
    """Receive and delete the one tasks-queue message; decoded."""
    (msg,) = take(engine.repos.tasks_queue)
    return decode_task_message(msg.content)


def replace_handler(monkeypatch, task_type: str, run) -> TaskHandler:
    """Swap a task type's function for ``run``; returns the real handler."""
    real = TASK_HANDLERS[task_type]
    monkeypatch.setitem(TASK_HANDLERS, task_type, TaskHandler(task_type, real.parameters_model, run))
    return real


def expected_hello(job_id: str, n: int, message: str = "hello") -> dict:
    """What the issue says hello_world returns, built from the task-id scheme."""
    s1 = [make_task_id(job_id, 1, i) for i in range(n)]
    s2 = [make_task_id(job_id, 2, i) for i in range(n)]
    return {"greetings": [f"{message} from {t}!" for t in s1],
            "replies": [f"{message} {a} from {b}" for a, b in zip(s1, s2)],
            "task_count": 2 * n}


def assert_completed_exactly(engine: Engine, job_id: str, n: int, message: str = "hello") -> None:
    """The job completed with hello_world's exact result."""
    job = engine.store.get_job(job_id)
    assert job.status == Status.COMPLETED, (job.status, job.error_details)
    assert job.result_data == expected_hello(job_id, n, message)


def together(fn, items: list) -> list:
    """Run ``fn(item)`` for every item in its own thread, all released at once; results or exceptions."""
    barrier, out = threading.Barrier(len(items)), [None] * len(items)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(items[i])
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# ----------------------------------------------------------------------------------- jobs over HTTP


def post_job(url: str, params: dict, job_type: str = "hello_world", codes: tuple[int, ...] = (202,),
             timeout: float = 30) -> str:
    """Submit a job to a host (``url`` ends in /api); its id (the answer's code must be one of ``codes``)."""
    r = requests.post(f"{url}/jobs/submit/{job_type}", json=params, timeout=timeout)
    assert r.status_code in codes, r.text
    return r.json()["job_id"]


def wait_terminal(base: str, job_id: str, timeout: float = 60,
                  want: tuple[str, ...] = ("completed", "failed")) -> dict:
    """Poll a host's status endpoint until the job's status is one of ``want``; its status body."""
    deadline, body = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        body = requests.get(f"{base}/jobs/status/{job_id}", timeout=10).json()
        if body["status"] in want:
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not {' or '.join(want)} after {timeout}s: {body}")


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "condition",
             every: float = 0.1) -> Any:
    """The first truthy value of ``condition()`` within ``timeout`` seconds; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --------------------------------------------------------------------------------- loopback servers
class Posted(NamedTuple):
    """One request a ``Receiver`` got (the body un-gzipped)."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A loopback HTTP server that records every POST (webhooks, OTLP, Azure Monitor ingestion): ``url`` is
    its /hook address, ``base`` its root. It answers 500 to the first ``fail_first`` requests; with
    ``hold_first`` it answers the first only once ``release`` is set (at most 8 s, under the 10 s webhook
    timeout); otherwise ``ok`` (Azure Monitor's /track gets the JSON answer its exporter reads)."""

    def __init__(self, fail_first: int = 0, hold_first: bool = False, ok: int = 204) -> None:
        self.requests: list[Posted] = []
        self.fail_first = fail_first
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                outer.requests.append(Posted(self.path, dict(self.headers), body))
                if hold_first and len(outer.requests) == 1:
                    outer.release.wait(8)
                if len(outer.requests) <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                answer = b'{"itemsReceived":0,"itemsAccepted":0,"errors":[]}' if "/track" in self.path else b""
                self.send_response(ok)
                if ok != 204:  # a 204 has no body
                    self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if ok != 204:
                    self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/hook"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# In its own process: GDAL can hold the GIL while it waits for an answer, and a listener thread in this
# process could then never answer (a test without the fix would hang instead of failing).
LISTENER = r"""
import http.server, pathlib, sys
root, log = pathlib.Path(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
class Counting(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        log.write(self.path + "\n")
        name = self.path.split("?", 1)[0].strip("/")
        body = (root / name).read_bytes() if name and (root / name).is_file() else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)
    do_HEAD = do_GET
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Listener:
    """A loopback HTTP server (``url``) serving files put in ``root``; ``hits`` are the paths requested."""

    def __init__(self, folder: Path) -> None:
        self.root, self.log = folder / "www", folder / "requests.log"
        self.root.mkdir()
        self.log.touch()
        self.proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(self.root), str(self.log)],
                                     stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    @property
    def hits(self) -> list[str]:
        time.sleep(0.2)  # let a request in flight reach the log
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


# ----------------------------------------------------------------------------------------- identity
def delegation_key() -> UserDelegationKey:
    """A fixed user delegation key (what Entra ID would hand the app), for signing without Azure."""
    key = UserDelegationKey()
    key.signed_oid, key.signed_tid = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"
    key.signed_start, key.signed_expiry = "2026-11-22T00:00:00Z", "2026-11-23T00:00:00Z"
    key.signed_service, key.signed_version = "b", "2025-01-05"
    key.value = base64.b64encode(b"k" * 32).decode()
    return key


def settings_table() -> list[str]:
    """The names in the first column of docs/configuration.md's settings table, top to bottom
    (``AzureWebJobsStorage__x`` is written ``__x`` there)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    names: list[str] = []
    for line in text[text.index("| setting |"):].splitlines()[2:]:
        if not line.startswith("|"):
            break
        for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
            names.append(f"AzureWebJobsStorage{name}" if name.startswith("__") else name)
    return names

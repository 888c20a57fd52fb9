"""local_host against a private Azurite: the function index, HTTP routing, queue semantics, timers, the CLI."""
from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

# tests/ and the repository root are on sys.path (pytest and conftest.py put them there)
from azurite_proc import Azurite, free_port
from support import wait_for

import local_host
import local_host_http
import local_host_worker
from local_host import LocalHost, LocalHostError, describe_functions, storage_client
from local_host_http import build_routes
from local_host_queues import QueueOptions
from local_host_timers import CronSchedule, parse_schedule, parse_timespan
from models import Message
from repository_queues import QueueProducer

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "toy_function_app.py"


@pytest.fixture(scope="module")
def lh_azurite(tmp_path_factory):
    """This module's own Azurite, stopped by PID at the end."""
    instance = Azurite(location=tmp_path_factory.mktemp("azurite-local-host")).start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def toy(lh_azurite, monkeypatch, tmp_path):
    """Environment for the toy app: a fresh queue name, a record file, a timer that never fires in a test."""
    queue = f"toy-{uuid.uuid4().hex[:16]}"
    records = tmp_path / "records.jsonl"
    monkeypatch.setenv("AzureWebJobsStorage", lh_azurite.connection_string)
    monkeypatch.setenv("TOY_QUEUE", queue)
    monkeypatch.setenv("TOY_SCHEDULE", "0 0 0 1 1 *")
    monkeypatch.setenv("TOY_RECORD_FILE", str(records))
    monkeypatch.delenv(local_host.LEASE_SETTING, raising=False)
    conn = lh_azurite.connection_string
    return SimpleNamespace(
        queue=queue, records=records,
        raw=QueueClient.from_connection_string(conn, queue),
        b64=QueueClient.from_connection_string(conn, queue, message_encode_policy=TextBase64EncodePolicy(),
                                               message_decode_policy=TextBase64DecodePolicy()),
        poison=QueueClient.from_connection_string(conn, f"{queue}-poison"))


@pytest.fixture
def hosts():
    """Start LocalHosts through this; all are stopped after the test."""
    started: list[LocalHost] = []

    def start(config: dict[str, Any] | None = None, **kwargs: Any) -> LocalHost:
        host = LocalHost(toy_app(), config or host_config(), kwargs.pop("port", 0), **kwargs).start()
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop(timeout=10)


def toy_app() -> Any:
    """A fresh import of the toy app: ``get_functions()`` may be called once per app object."""
    spec = importlib.util.spec_from_file_location(f"toy_app_{uuid.uuid4().hex}", TOY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def host_config(**queues: Any) -> dict[str, Any]:
    """host.json with fast polling and immediate retries, overridden by ``queues``."""
    base = {"batchSize": 16, "newBatchThreshold": 8, "maxDequeueCount": 5, "visibilityTimeout": "00:00:00",
            "maxPollingInterval": "00:00:00.2", "messageEncoding": "base64"}
    return {"version": "2.0", "extensions": {"queues": {**base, **queues}}}


def records(path: Path, kind: str = "queue") -> list[dict[str, Any]]:
    """The toy's records of one kind (complete lines only: the toy may be writing one)."""
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().split("\n")[:-1]) if r["kind"] == kind]


def queue_empty(client: QueueClient) -> bool:
    """No message left, visible or not."""
    return client.get_queue_properties().approximate_message_count == 0


# ---- the index -------------------------------------------------------------------------------------------

def test_describe_functions_reads_the_apps_bindings(toy):
    found = {b.name: b for b in describe_functions(toy_app())}
    assert set(found) == {"item", "plain", "echo", "toy_queue", "toy_timer"}
    assert found["echo"].methods is None and found["echo"].wants_context
    item, plain, queue, timer = found["item"], found["plain"], found["toy_queue"], found["toy_timer"]
    assert (item.trigger, item.route, item.methods, item.auth_level, item.arg_name) == (
        "http", "items/{item_id:int}/{action?}", ("GET", "POST"), "function", "req")
    assert (plain.methods, plain.auth_level) == (("DELETE",), "anonymous")
    assert (queue.trigger, queue.queue_name, queue.queue_name_raw, queue.connection, queue.arg_name) == (
        "queue", toy.queue, "%TOY_QUEUE%", "AzureWebJobsStorage", "msg")
    assert (timer.trigger, timer.schedule, timer.schedule_raw, timer.run_on_startup, timer.arg_name) == (
        "timer", "0 0 0 1 1 *", "%TOY_SCHEDULE%", False, "timer")
    assert queue.func.__name__ == "toy_queue" and callable(item.func)
    assert item.describe() == "http  GET,POST /api/items/{item_id:int}/{action?}  -> item"
    assert queue.describe() == f"queue {toy.queue} (AzureWebJobsStorage) -> toy_queue"


def test_unset_setting_is_named(toy, monkeypatch):
    monkeypatch.delenv("TOY_QUEUE")
    with pytest.raises(LocalHostError, match="TOY_QUEUE"):
        describe_functions(toy_app())


def test_second_indexing_of_one_app_explains_itself(toy):
    app = toy_app()
    describe_functions(app)
    with pytest.raises(LocalHostError, match="once per app"):
        describe_functions(app)


def test_unknown_function_filter_lists_the_known_ones(toy):
    with pytest.raises(LocalHostError, match="toy_queue"):
        LocalHost(toy_app(), host_config(), 0, functions=["nope"])


# ---- pure parsers ----------------------------------------------------------------------------------------

def test_timespans_and_queue_options():
    assert parse_timespan("00:00:10") == 10
    assert parse_timespan("1.02:03:04.5") == 93784.5
    assert parse_timespan("00:00:00.2") == pytest.approx(0.2)
    with pytest.raises(ValueError):
        parse_timespan("10 seconds")
    options = QueueOptions.from_host_config(local_host.load_host_config())
    assert options.batch_size >= 1 and options.message_encoding in ("base64", "none")
    defaults = QueueOptions.from_host_config({"Extensions": {"Queues": {"BatchSize": 10}}})
    assert (defaults.batch_size, defaults.new_batch_threshold, defaults.max_dequeue_count,
            defaults.max_polling_interval, defaults.message_encoding) == (10, 5, 5, 60.0, "base64")
    with pytest.raises(ValueError, match="batchSize"):
        QueueOptions.from_host_config(host_config(batchSize=33))


def test_ncrontab_next_occurrences():
    at = datetime(2024, 2, 24, 12, 3, 10, tzinfo=UTC)  # a Saturday
    assert CronSchedule("0 */5 * * * *").next_after(at) == at.replace(minute=5, second=0)
    assert CronSchedule("30 15 9 * * 1-5").next_after(at) == datetime(2024, 2, 26, 9, 15, 30, tzinfo=UTC)
    assert CronSchedule("0 0 0 29 2 *").next_after(at) == datetime(2024, 2, 29, tzinfo=UTC)
    assert CronSchedule("0 0 8,20 * * *").next_after(at) == at.replace(hour=20, minute=0, second=0)
    assert CronSchedule("0 0 12 * JAN,jul mon").next_after(at) == datetime(2024, 7, 1, 12, tzinfo=UTC)
    assert CronSchedule("10-20/5 * * * * *").fields[0] == {10, 15, 20}
    assert parse_schedule("00:00:30").next_after(at) == at.replace(second=40)
    for bad in ("0 * * * *", "61 * * * * *", "0 0 0 * * 7", "*/0 * * * * *"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_route_templates():
    def route(template: str) -> Any:
        return build_routes([SimpleNamespace(route=template, methods=None, name=template)])[0]

    assert route("jobs/status/{job_id}").match("/jobs/status/a%20b") == {"job_id": "a b"}
    assert route("jobs/status/{job_id}").match("/JOBS/Status/x/") == {"job_id": "x"}
    assert route("jobs/status/{job_id}").match("/jobs/status/x/y") is None
    assert route("n/{n:range(1,5)}").match("/n/6") is None and route("n/{n:range(1,5)}").match("/n/5")
    assert route(r"c/{code:regex(^a\d{{2}}$)}").match("/c/a12") == {"code": "a12"}
    assert route(r"c/{code:regex(^a\d{{2}}$)}").match("/c/a123") is None
    assert route("files/{name}.{ext}").match("/files/report.pdf") == {"name": "report", "ext": "pdf"}
    assert route("page/{n:int=1}").match("/page") == {"n": "1"}
    assert route("static/{*rest}").match("/static/a/b/c") == {"rest": "a/b/c"}
    ordered = build_routes([SimpleNamespace(route=t, methods=None, name=t)
                            for t in ("jobs/{action}/{id}", "jobs/status/{id}")])
    assert ordered[0].template == "jobs/status/{id}"
    with pytest.raises(ValueError, match="constraint"):
        route("x/{id:nosuch}")


def test_identity_connection(monkeypatch):
    monkeypatch.delenv("IdStore", raising=False)
    monkeypatch.setenv("IdStore__accountName", "acct")
    monkeypatch.setenv("IdStore__clientId", "00000000-0000-0000-0000-000000000001")
    client = storage_client("IdStore", "queue")
    assert client.url.startswith("https://acct.queue.core.windows.net")
    assert type(client.credential).__name__ == "DefaultAzureCredential"
    with pytest.raises(LocalHostError, match="NoSuchConnection"):
        storage_client("NoSuchConnection", "queue")


# ---- HTTP ------------------------------------------------------------------------------------------------

def test_http_routes_params_and_errors(toy, hosts):
    host = hosts(functions=["item", "plain"])
    base = f"http://127.0.0.1:{host.port}/api"
    got = requests.post(f"{base}/items/42/rename?x=1&y=", data=b'{"a": 1}',
                        headers={"Content-Type": "application/json"}, timeout=5)
    assert got.status_code == 201 and got.headers["X-Toy"] == "1"
    assert got.headers["Content-Type"].startswith("application/json")
    echo = got.json()
    assert echo["route"] == {"item_id": "42", "action": "rename"}
    assert echo["params"] == {"x": "1", "y": ""} and echo["body"] == '{"a": 1}'
    assert echo["content_type"] == "application/json" and echo["url"].endswith("/api/items/42/rename?x=1&y=")
    assert requests.get(f"{base}/items/7", timeout=5).json()["route"] == {"item_id": "7"}
    assert requests.delete(f"{base}/plain", timeout=5).text == "deleted"

    for path in ("/items/notanint", "/nothing/here", "/../items/1"):
        missing = requests.get(f"{base}{path}", timeout=5)
        assert missing.status_code == 404 and missing.json()["error"] == "not_found", path
    assert requests.get(f"http://127.0.0.1:{host.port}/items/1", timeout=5).status_code == 404  # no prefix
    wrong = requests.put(f"{base}/items/1", data=b"x", timeout=5)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, POST"
    assert wrong.json()["error"] == "method_not_allowed"
    assert requests.head(f"{base}/items/1", timeout=5).status_code == 405
    failed = requests.get(f"{base}/items/1?boom=1", timeout=5)
    assert failed.status_code == 500 and failed.json()["function"] == "item"
    assert "boom requested" in failed.json()["message"]


def test_http_async_context_chunked_and_head(toy, hosts):
    base = f"http://127.0.0.1:{hosts(functions=['echo']).port}/api"
    chunked = requests.post(f"{base}/echo/a/b%20c", data=iter([b"first,", b"second"]), timeout=5)
    assert chunked.json() == {"function": "echo", "invocation_id": chunked.json()["invocation_id"],
                              "rest": "a/b c", "body": "first,second"}
    assert len(chunked.json()["invocation_id"]) == 36
    head = requests.head(f"{base}/echo/x", timeout=5)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["Content-Length"]) > 0
    with requests.Session() as session:  # keep-alive: one connection, several requests
        assert [session.get(f"{base}/echo/{i}", timeout=5).json()["rest"] for i in range(3)] == ["0", "1", "2"]


def test_http_route_prefix_from_host_json(toy, hosts):
    host = hosts({"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}, functions=["item"])
    assert requests.get(f"http://127.0.0.1:{host.port}/items/3", timeout=5).json()["route"] == {"item_id": "3"}


def _raw(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Send ``request`` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


CHUNKED = b"POST /api/echo/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_read(toy, hosts, monkeypatch):
    port = hosts(functions=["echo"]).port
    huge = _raw(port, CHUNKED + b"%x\r\n" % (local_host_http.MAX_BODY_BYTES + 1))  # announced, never sent
    assert huge.startswith(b"HTTP/1.1 413 ") and b'"error": "payload_too_large"' in huge
    monkeypatch.setattr(local_host_http, "MAX_BODY_BYTES", 64 * 1024)
    kib = b"400\r\n" + b"a" * 1024 + b"\r\n"
    assert _raw(port, CHUNKED + kib * 64 + b"0\r\n\r\n").startswith(b"HTTP/1.1 200 ")  # exactly the limit
    over = _raw(port, CHUNKED + kib * 64 + b"400\r\n")  # 64 KiB sent, then 1 KiB more announced
    assert over.startswith(b"HTTP/1.1 413 ")
    assert _raw(port, CHUNKED + b"zz\r\n").startswith(b"HTTP/1.1 400 ")


def test_connections_are_bounded_and_silent_ones_time_out(toy, hosts, monkeypatch):
    assert local_host_http.MAX_CONNECTIONS == 64 and local_host_http._Handler.timeout <= 15
    monkeypatch.setattr(local_host_http, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(local_host_http._Handler, "timeout", 1)
    port = hosts(functions=["echo"]).port
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.2)  # both accepted, each holding a slot
        busy = _raw(port, b"")
        assert busy.startswith(b"HTTP/1.1 503 ") and b'"error": "server_busy"' in busy
        started = time.monotonic()
        assert [s.recv(1) for s in silent] == [b"", b""]  # closed by the server after its read timeout
        assert time.monotonic() - started < 3
    finally:
        for s in silent:
            s.close()
    assert wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/api/echo/ok", timeout=5).status_code == 200,
                    5, "a free slot")


# ---- queues ----------------------------------------------------------------------------------------------

def test_base64_message_arrives_decoded_and_is_deleted(toy, hosts):
    hosts(functions=["toy_queue"])
    wait_for(lambda: _exists(toy.raw), 5, "the host to create the trigger queue")
    text = json.dumps({"tag": "héllo wörld"})
    toy.b64.send_message(text)
    got = wait_for(lambda: records(toy.records), 10, "the message")
    assert [(r["body"], r["dequeue_count"]) for r in got] == [(text, 1)]
    assert got[0]["id"] and got[0]["pop_receipt"] and got[0]["inserted"] != "None"
    wait_for(lambda: queue_empty(toy.raw), 5, "the message to be deleted")


def test_failing_message_goes_to_poison_after_max_dequeue_count(toy, hosts):
    hosts(host_config(maxDequeueCount=3, visibilityTimeout="00:00:00"), functions=["toy_queue"])
    wait_for(lambda: _exists(toy.raw), 5, "the host to create the queue")
    text = json.dumps({"fail": True, "tag": uuid.uuid4().hex})
    toy.b64.send_message(text)
    poisoned = wait_for(lambda: list(toy.poison.peek_messages(max_messages=5)) if _exists(toy.poison) else [],
                        15, "the poison queue")
    assert [m.content for m in poisoned] == [base64.b64encode(text.encode()).decode()]  # the original wire text
    assert sorted(r["dequeue_count"] for r in records(toy.records)) == [1, 2, 3]
    wait_for(lambda: queue_empty(toy.raw), 5, "the original to be deleted")
    time.sleep(0.5)
    assert len(records(toy.records)) == 3


def test_invalid_base64_fails_into_poison_without_running(toy, hosts):
    hosts(host_config(maxDequeueCount=2), functions=["toy_queue"])
    wait_for(lambda: _exists(toy.raw), 5, "the host to create the queue")
    toy.raw.send_message("this is not base64!")
    poisoned = wait_for(lambda: list(toy.poison.peek_messages()) if _exists(toy.poison) else [], 15, "poison")
    assert [m.content for m in poisoned] == ["this is not base64!"]
    assert records(toy.records) == []
    wait_for(lambda: queue_empty(toy.raw), 5, "the original to be deleted")


def test_message_encoding_none(toy, hosts):
    toy.raw.create_queue()
    text = '{"tag": "plain text, not base64"}'
    toy.raw.send_message(text)
    hosts(host_config(messageEncoding="none"), functions=["toy_queue"])
    got = wait_for(lambda: records(toy.records), 10, "the message")
    assert [(r["body"], r["dequeue_count"]) for r in got] == [(text, 1)]
    wait_for(lambda: queue_empty(toy.raw), 5, "the message to be deleted")


def test_batch_size_and_new_batch_threshold_bound_concurrency(toy, hosts):
    toy.raw.create_queue()
    sleeps = [0.3, 0.6, 0.9, 1.2] * 4
    for i, sleep in enumerate(sleeps):
        toy.b64.send_message(json.dumps({"sleep": sleep, "n": i}))
    hosts(host_config(batchSize=4, newBatchThreshold=2), functions=["toy_queue"])
    got = wait_for(lambda: len(records(toy.records)) == len(sleeps) and records(toy.records), 20, "all messages")
    events = sorted([(r["start"], 1) for r in got] + [(r["end"], -1) for r in got])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 4 < peak <= 6, f"peak concurrency {peak}"
    assert sorted(json.loads(r["body"])["n"] for r in got) == list(range(len(sleeps)))
    wait_for(lambda: queue_empty(toy.raw), 5, "all messages deleted")


class _Tagged(Message):
    tag: str


def test_a_message_this_process_enqueues_wakes_the_backed_off_poller(toy, hosts, lh_azurite):
    """Idle, the poller backs off (0.1, 0.2, ... 3.2 s); a send through ``repository_queues`` wakes it, as the
    Functions host wakes a listener for its own output bindings. A raw send waits for the back-off."""
    hosts(host_config(maxPollingInterval="00:00:30"), functions=["toy_queue"])
    wait_for(lambda: _exists(toy.raw), 5, "the host to create the queue")
    time.sleep(3.5)  # polls at about 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s; the next one is due near 6.3 s
    producer = QueueProducer(QueueServiceClient.from_connection_string(lh_azurite.connection_string),
                             toy.queue, encoding="base64")
    sent = time.monotonic()
    producer.send(_Tagged(tag="woken"))
    got = wait_for(lambda: records(toy.records), 10, "the message")
    assert json.loads(got[0]["body"])["tag"] == "woken"
    assert time.monotonic() - sent < 1.5, "the poller slept through its back-off: the send did not wake it"


def test_sync_functions_share_the_worker_pool_of_python_threadpool_thread_count(toy, hosts, monkeypatch):
    """Like the Python worker: the host holds batchSize messages, but sync invocations run on a process-wide
    pool of PYTHON_THREADPOOL_THREAD_COUNT threads, long-lived (reused, not one per message)."""
    monkeypatch.setattr(local_host_worker, "_pool", None)
    monkeypatch.setenv(local_host_worker.THREADS_SETTING, "2")
    toy.raw.create_queue()
    for i in range(8):
        toy.b64.send_message(json.dumps({"sleep": 0.3, "n": i}))
    host = hosts(host_config(batchSize=8, newBatchThreshold=4), functions=["toy_queue"])
    got = wait_for(lambda: len(records(toy.records)) == 8 and records(toy.records), 20, "all messages")
    events = sorted([(r["start"], 1) for r in got] + [(r["end"], -1) for r in got])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2, f"peak concurrency {peak} with a pool of 2"
    assert len({r["thread"] for r in got}) == 2 and all(r["thread"].startswith("worker") for r in got)
    host.stop(timeout=10)
    local_host_worker.sync_pool().shutdown(wait=True)
    monkeypatch.setenv(local_host_worker.THREADS_SETTING, "zero")
    monkeypatch.setattr(local_host_worker, "_pool", None)
    with pytest.raises(local_host_worker.WorkerSettingError,
                       match="PYTHON_THREADPOOL_THREAD_COUNT must be a whole number"):
        local_host_worker.sync_pool()


def test_lease_is_renewed_while_the_function_runs(toy, hosts, monkeypatch):
    monkeypatch.setenv(local_host.LEASE_SETTING, "2")
    first, second = hosts(functions=["toy_queue"]), hosts(functions=["toy_queue"])  # two instances, one queue
    assert first.lease_seconds == second.lease_seconds == 2
    wait_for(lambda: _exists(toy.raw), 5, "the host to create the queue")
    toy.b64.send_message(json.dumps({"sleep": 5, "announce": True}))
    wait_for(lambda: records(toy.records), 10, "the message to run to the end")
    wait_for(lambda: queue_empty(toy.raw), 5, "the message to be deleted")
    assert [r["dequeue_count"] for r in records(toy.records, "queue_start")] == [1]
    assert len(records(toy.records)) == 1


def test_message_reappears_one_lease_after_kill_9(toy, hosts, tmp_path):
    env = {**os.environ, local_host.LEASE_SETTING: "2", "PYTHONUNBUFFERED": "1"}
    with _cli(tmp_path, env, "--functions", "toy_queue", "--no-timers") as proc:
        _read_until(proc, "ready")
        wait_for(lambda: _exists(toy.raw), 5, "the host to create the queue")
        toy.b64.send_message(json.dumps({"sleep_first": 60, "announce": True}))
        wait_for(lambda: records(toy.records, "queue_start"), 10, "the first delivery")
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
    hosts(functions=["toy_queue"])
    again = wait_for(lambda: records(toy.records), 10, "the redelivery")
    assert again[0]["dequeue_count"] == 2
    assert time.monotonic() - killed < 2 + 1.5  # one lease, plus polling
    wait_for(lambda: queue_empty(toy.raw), 5, "the message to be deleted")


def test_poller_survives_a_storage_restart(toy, hosts, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="local_host_queues")
    own = Azurite(location=tmp_path / "restarting").start()
    try:
        monkeypatch.setenv("AzureWebJobsStorage", own.connection_string)
        queue = QueueClient.from_connection_string(own.connection_string, toy.queue,
                                                   message_encode_policy=TextBase64EncodePolicy())
        hosts(functions=["toy_queue"])
        wait_for(lambda: _exists(queue), 5, "the host to create the queue")
        own.stop()
        wait_for(lambda: "receive failed" in caplog.text, 15, "the poller to notice storage is down")
        own.start()
        queue.send_message('{"after": "restart"}')
        got = wait_for(lambda: records(toy.records), 15, "the message sent after the restart")
        assert [r["body"] for r in got] == ['{"after": "restart"}']
    finally:
        own.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "local_host_queues"]
    assert sum("receive failed" in m for m in messages) == 1
    assert any("receiving again" in m for m in messages)


# ---- timers ----------------------------------------------------------------------------------------------

def test_timer_fires_once_per_occurrence_across_hosts(toy, hosts, monkeypatch):
    monkeypatch.setenv("TOY_SCHEDULE", "* * * * * *")
    hosts(functions=["toy_timer"])
    hosts(functions=["toy_timer"])
    time.sleep(3.5)
    occurrences = [r["occurrence"] for r in records(toy.records, "timer")]
    assert len(occurrences) >= 2
    assert len(set(occurrences)) == len(occurrences), occurrences


# ---- the command line ------------------------------------------------------------------------------------

def test_cli_prints_functions_serves_and_exits_on_sigterm(toy, tmp_path):
    port = free_port()
    with _cli(tmp_path, dict(os.environ), "--port", str(port), "--no-timers") as proc:
        lines = _read_until(proc, "ready")
        assert "http  GET,POST /api/items/{item_id:int}/{action?}  -> item" in lines
        assert f"queue {toy.queue} (AzureWebJobsStorage) -> toy_queue" in lines
        assert not any(line.startswith("timer") for line in lines)
        assert requests.get(f"http://127.0.0.1:{port}/api/items/5", timeout=5).json()["route"] == {"item_id": "5"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    log = (tmp_path / "host.log").read_text()
    assert " INFO local_host_http GET /api/items/5 -> item 200 " in log and " stopping" in log


def test_cli_exits_after_its_shutdown_timeout_with_an_invocation_still_running(toy, tmp_path):
    """The worker pool's threads would hold the interpreter's exit until the running function returns; past
    the shutdown timeout the host exits anyway (1), and the message reappears after its lease."""
    with _cli(tmp_path, dict(os.environ), "--no-timers", "--shutdown-timeout", "1") as proc:
        _read_until(proc, "ready")
        toy.b64.send_message(json.dumps({"sleep": 60, "announce": True}))
        wait_for(lambda: records(toy.records, "queue_start"), 15, "the function to start")
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 1
        assert time.monotonic() - stopped < 10, "the exit waited for the running function"


@contextmanager
def _cli(tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen]:
    """``python local_host.py --app tests.toy_function_app ...`` as a child process, killed on exit."""
    (tmp_path / "host.json").write_text(json.dumps(host_config()))
    cmd = [sys.executable, str(ROOT / "local_host.py"), "--app", "tests.toy_function_app",
           "--settings", str(tmp_path / "absent.json"), "--host-json", str(tmp_path / "host.json"),
           "--log-file", str(tmp_path / "host.log"), "--port", "0", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _read_until(proc: subprocess.Popen, marker: str, timeout: float = 20) -> list[str]:
    """Lines the child prints up to the one containing ``marker``."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if marker in line:
                done.set()
                return
    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), f"no {marker!r} line; got {lines}"
    return lines


def _exists(client: QueueClient) -> bool:
    try:
        client.get_queue_properties()
        return True
    except ResourceNotFoundError:
        return False

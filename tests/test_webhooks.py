"""Completion webhooks: delivered once per terminal status, signed, retried; refused targets never called."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import engine_recovery
import api_jobs
import repository_webhooks
from conftest import fresh_settings
from errors import BadRequestError
from queue_driver import QueueDriver
from repositories import Repositories
from services_webhook import SIGNATURE_HEADER, TargetRefused, check_addresses, check_url, sign, verify
from task_manager import Engine

SECRET = "s3cret with spaces"


class Receiver:
    """A local HTTP receiver that fails its first ``fail_first`` requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[dict] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"body": body, "headers": dict(self.headers)})
                self.send_response(500 if len(outer.requests) <= outer.fail_first else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def engine(azurite):
    settings = fresh_settings(azurite.connection_string, retry_base_delay_s=0, sweeper_grace_s=0,
                              webhook_secret=SECRET, webhook_allow_loopback=True)
    return Engine(Repositories(settings).ensure())


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def submit(engine, params: dict, callback_url: str) -> str:
    code, body = api_jobs.submit(engine, "hello_world", json.dumps(params).encode(), "http://t", callback_url)
    assert code == 202, body
    return body["job_id"]


# ---------------------------------------------------------------- pure rules
@pytest.mark.parametrize("url", ["http://example.com/h", "ftp://x/y", "https://user:pw@example.com/h", "not a url",
                                 "https:///nohost"])
def test_bad_callback_urls_are_refused(url):
    with pytest.raises(TargetRefused):
        check_url(url, allow_loopback=False)


def test_loopback_http_only_with_the_development_setting():
    assert check_url("http://127.0.0.1:8080/h", allow_loopback=True) == ("127.0.0.1", 8080)
    with pytest.raises(TargetRefused):
        check_url("http://127.0.0.1:8080/h", allow_loopback=False)
    assert check_url("https://hooks.example.com/x", allow_loopback=False) == ("hooks.example.com", 443)


@pytest.mark.parametrize("address,kind", [("10.1.2.3", "private"), ("192.168.0.1", "private"),
                                          ("172.16.5.5", "private"), ("169.254.169.254", "link-local"),
                                          ("fe80::1", "link-local"), ("fd00::1", "private"), ("127.0.0.1", "loopback"),
                                          ("0.0.0.0", "unspecified"), ("240.0.0.1", "reserved"), ("::1", "loopback")])
def test_private_link_local_and_loopback_addresses_are_refused(address, kind):
    with pytest.raises(TargetRefused, match=kind):
        check_addresses(["93.184.216.34", address], allow_loopback=False)  # one bad address is enough


def test_public_addresses_pass_and_signatures_verify():
    check_addresses(["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"], allow_loopback=False)
    body = b'{"job_id": "x"}'
    assert verify(body, SECRET, sign(body, SECRET)) and not verify(body + b" ", SECRET, sign(body, SECRET))


# ---------------------------------------------------------------- delivery
def test_delivered_once_per_terminal_status_and_signed(engine, receiver):
    job_id = submit(engine, {"n": 2}, receiver.url)
    QueueDriver(engine).run(job_id)
    QueueDriver(engine).run()
    assert len(receiver.requests) == 1
    sent = receiver.requests[0]
    assert verify(sent["body"], SECRET, sent["headers"][SIGNATURE_HEADER])
    status = json.loads(sent["body"])
    assert status["job_id"] == job_id and status["status"] == "completed" and status["result_data"]["task_count"] == 4
    assert sent["headers"]["X-Geoetl-Event"] == "job.completed"
    assert engine.store.get_job(job_id).webhook == "delivered"
    assert api_jobs.status(engine, job_id)[1]["webhook"] == "delivered"


def test_failed_and_cancelled_jobs_notify_too(engine, receiver):
    failed = submit(engine, {"n": 2, "fail_indices": [0]}, receiver.url)
    QueueDriver(engine).run(failed)
    cancelled = submit(engine, {"n": 2, "message": "to cancel"}, receiver.url)
    api_jobs.cancel(engine, cancelled)
    QueueDriver(engine).run()
    events = sorted(r["headers"]["X-Geoetl-Event"] for r in receiver.requests)
    assert events == ["job.cancelled", "job.failed"]


def test_a_failing_receiver_is_retried_until_it_answers(engine):
    flaky = Receiver(fail_first=2)
    try:
        job_id = submit(engine, {"n": 1}, flaky.url)
        QueueDriver(engine).run(job_id)
        QueueDriver(engine).run()
        assert len(flaky.requests) == 3
        assert engine.store.get_job(job_id).webhook == "delivered"
    finally:
        flaky.close()


def test_gives_up_after_max_attempts_with_a_readable_error(engine):
    down = Receiver(fail_first=100)
    try:
        job_id = submit(engine, {"n": 1}, down.url)
        QueueDriver(engine).run(job_id)
        QueueDriver(engine).run()
        job = engine.store.get_job(job_id)
        assert len(down.requests) == engine.settings.webhook_max_attempts
        assert job.webhook == "failed" and job.webhook_error == (
            f"gave up after {engine.settings.webhook_max_attempts} attempts: receiver answered HTTP 500")
    finally:
        down.close()


def test_refused_targets_are_never_contacted(engine, monkeypatch):
    calls = []
    monkeypatch.setattr(repository_webhooks, "post", lambda *a, **k: calls.append(a) or 204)
    monkeypatch.setattr(repository_webhooks, "resolve",
                        lambda host, port: {"internal.example.com": ["10.0.0.7"]}.get(host, ["127.0.0.1"]))
    engine.settings.webhook_allow_loopback = False
    ids = [submit(engine, {"n": 1, "message": m}, url) for m, url in
           [("private", "https://internal.example.com/hook"), ("loopback", "https://localhost:9/hook")]]
    QueueDriver(engine).run()
    for job_id, kind in zip(ids, ("private", "loopback")):
        job = engine.store.get_job(job_id)
        assert job.webhook == "refused" and kind in job.webhook_error
    assert calls == []
    with pytest.raises(BadRequestError, match="https"):
        api_jobs.submit(engine, "hello_world", b"{}", "http://t", "http://example.com/hook")


def test_callback_needs_a_secret_and_does_not_change_the_job_id(azurite, receiver):
    plain = Engine(Repositories(fresh_settings(azurite.connection_string)).ensure())
    with pytest.raises(BadRequestError, match="WEBHOOK_SECRET"):
        api_jobs.submit(plain, "hello_world", b"{}", "http://t", "https://example.com/hook")
    a = api_jobs.submit(plain, "hello_world", b'{"n": 2}', "http://t")[1]["job_id"]
    signed = Engine(Repositories(fresh_settings(azurite.connection_string, webhook_secret=SECRET,
                                                webhook_allow_loopback=True)).ensure())
    assert api_jobs.submit(signed, "hello_world", b'{"n": 2}', "http://t", receiver.url)[1]["job_id"] == a


def test_sweeper_resends_a_webhook_whose_message_was_lost(engine, receiver):
    job_id = submit(engine, {"n": 1}, receiver.url)
    driver = QueueDriver(engine)
    driver.run(job_id)
    engine.repos.jobs_queue.client.clear_messages()  # the notify message is lost
    engine.store.replace_job(engine.store.get_job(job_id).model_copy(update={"webhook": "pending"}))
    assert engine_recovery.sweep(engine).get("resent_webhook") == 1
    QueueDriver(engine).run()
    assert len(receiver.requests) >= 1 and engine.store.get_job(job_id).webhook == "delivered"

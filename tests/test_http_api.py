"""The HTTP API end to end: real local host processes, real Azurite, real queues."""
from __future__ import annotations

import json

import pytest
import requests

from support import fresh_settings, settings_env, wait_terminal
from host_proc import HostProcess
from models import make_task_id
from repositories import Repositories


@pytest.fixture
def env(azurite):
    settings = fresh_settings(azurite.connection_string)
    Repositories(settings).ensure()
    return settings


@pytest.fixture
def host(env, tmp_path):
    proc = HostProcess(settings_env(env), tmp_path / "host.log").start()
    yield proc
    proc.stop()


@pytest.fixture
def http_only_host(env, tmp_path):
    """A host serving only the HTTP functions: queued messages stay where tests can count them."""
    proc = HostProcess(settings_env(env), tmp_path / "http.log", functions=["submit_job", "job_status"]).start()
    yield proc
    proc.stop()


def test_hello_world_end_to_end_through_http_and_queues(host):
    r = requests.post(f"{host.url}/jobs/submit/hello_world", json={"n": 5, "message": "bonjour"}, timeout=10)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["stage"] == 1 and body["total_stages"] == 2
    assert body["status_url"] == f"http://127.0.0.1:{host.port}/api/jobs/status/{body['job_id']}"
    final = wait_terminal(host.url, body["job_id"])
    job_id = body["job_id"]
    s1 = [make_task_id(job_id, 1, i) for i in range(5)]
    s2 = [make_task_id(job_id, 2, i) for i in range(5)]
    assert final["status"] == "completed", final
    assert final["result_data"] == {"greetings": [f"bonjour from {t}!" for t in s1],
                                    "replies": [f"bonjour {a} from {b}" for a, b in zip(s1, s2)],
                                    "task_count": 10}
    assert final["parameters"]["n"] == 5 and final["stage"] == 2 and final["stage_name"] == "worlds_reply"
    assert final["tasks"]["completed"] == 10
    for key in ("created_at", "updated_at", "stages", "job_type"):
        assert key in final


def test_same_request_in_another_key_order_is_the_same_job(http_only_host, env):
    url = f"{http_only_host.url}/jobs/submit/hello_world"
    first = requests.post(url, data='{"n": 7, "message": "m"}', timeout=10)
    again = requests.post(url, data='{"message": "m", "n": 7, "sleep_ms": 0}', timeout=10)
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["job_id"] == again.json()["job_id"]
    assert again.json()["status"] == "queued"
    jobs_queue = Repositories(env).jobs_queue.client
    assert jobs_queue.get_queue_properties().approximate_message_count == 1
    table = Repositories(env).store.jobs
    assert len(list(table.list_entities())) == 1


@pytest.mark.parametrize("path,body,code,error", [
    ("jobs/submit/no_such_type", b"{}", 404, "unknown_name"),
    ("jobs/submit/hello_world", b'{"n": 0, "message": ""}', 400, "invalid_parameters"),
    ("jobs/submit/hello_world", b'{"n": "many"}', 400, "invalid_parameters"),
    ("jobs/submit/hello_world", b'{"unknown_field": 1}', 400, "invalid_parameters"),
    ("jobs/submit/hello_world", b"{not json", 400, "bad_request"),
    ("jobs/submit/hello_world", b"[1, 2]", 400, "bad_request"),
    ("jobs/submit/hello_world", b"", 400, "bad_request"),
    ("jobs/submit/hello_world", b"\xff\xfe", 400, "bad_request"),
    ("jobs/submit/hello_world", b'{"pad": "' + b"x" * (1024 * 1024) + b'"}', 413, "payload_too_large"),
])
def test_bad_submissions_get_a_4xx_json_naming_the_problem(http_only_host, path, body, code, error):
    r = requests.post(f"{http_only_host.url}/{path}", data=body, timeout=30)
    assert r.status_code == code, r.text
    payload = r.json()
    assert payload["error"] == error and payload["message"]
    if error == "unknown_name":
        assert "hello_world" in payload["available"]
    if path.endswith("hello_world") and body.startswith(b'{"n": 0'):
        assert {e["field"] for e in payload["errors"]} == {"n", "message"}


@pytest.mark.parametrize("job_id", ["0" * 64, "not-a-job-id", "A" * 64])
def test_status_of_unknown_or_malformed_id_is_404_json(http_only_host, job_id):
    r = requests.get(f"{http_only_host.url}/jobs/status/{job_id}", timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_wrong_method_and_unknown_route_are_json(http_only_host):
    assert requests.get(f"{http_only_host.url}/jobs/submit/hello_world", timeout=10).status_code == 405
    r = requests.get(f"{http_only_host.url}/nothing/here", timeout=10)
    assert r.status_code == 404 and json.loads(r.text)["error"] == "not_found"

"""Faults against real host processes: kill -9 mid-task, Azurite restarts, poison through the host,
retry and cancel over HTTP. Slow matrices are marked ``slow``; benchmarks/chaos_report.py runs them
20 times each for the report."""
from __future__ import annotations

import time

import pytest
import requests

from azurite_proc import Azurite
from chaos_cluster import Cluster, run_with_kills
from support import expected_hello, post_job, wait_terminal

pytestmark = pytest.mark.chaos

@pytest.fixture
def cluster(azurite, tmp_path):
    c = Cluster(azurite, tmp_path)
    yield c
    c.stop()


def test_kill_9_while_a_task_sleeps_in_its_handler_then_the_job_completes(cluster):
    a = cluster.start_host()
    job_id = post_job(a.url, {"n": 2, "sleep_ms": 3000, "message": "kill"}, timeout=10)
    cluster.wait_event("task_started", job_id)
    a.kill()
    b = cluster.start_host()
    final = wait_terminal(b.url, job_id, timeout=90)
    assert final["status"] == "completed" and final["result_data"] == expected_hello(job_id, 2, "kill")
    attempts = [t.attempts for t in cluster.repos.store.list_tasks(job_id, 1)]
    assert max(attempts) == 2, attempts  # the killed attempt was taken over once its lease ended


def test_azurite_restarted_in_the_middle_of_a_job(tmp_path):
    storage = Azurite(location=tmp_path / "azurite").start()
    cluster = Cluster(storage, tmp_path)
    try:
        host = cluster.start_host()
        job_id = post_job(host.url, {"n": 20, "sleep_ms": 300, "message": "restart"}, timeout=10)
        cluster.wait_event("task_started", job_id)
        storage.stop()
        time.sleep(3)
        storage.start()  # same --location and ports: data survives
        final = wait_terminal(host.url, job_id, timeout=120)
        assert final["status"] == "completed", final
        assert final["result_data"] == expected_hello(job_id, 20, "restart")
    finally:
        cluster.stop()
        storage.stop()


def test_always_transient_handler_ends_in_poison_through_the_host(cluster):
    host = cluster.start_host()
    job_id = post_job(host.url, {"n": 1, "transient_failures": 100}, timeout=10)
    final = wait_terminal(host.url, job_id, timeout=90)
    assert final["status"] == "failed"
    task = cluster.repos.store.get_task(job_id, 1, 0)
    assert task.attempts == 5 and task.error_details.startswith("gave up after 5 attempts: simulated transient")
    assert "gave up after 5 attempts" in final["error_details"]
    assert any(e["event"] == "task_gave_up" for e in cluster.events())


def test_retry_and_cancel_over_http(cluster):
    host = cluster.start_host()
    job_id = post_job(host.url, {"n": 3, "fail_indices": [1], "message": "retry"}, timeout=10)
    assert wait_terminal(host.url, job_id)["status"] == "failed"
    assert requests.post(f"{host.url}/jobs/{job_id}/cancel", timeout=10).status_code == 409
    store = cluster.repos.store
    task = store.get_task(job_id, 1, 1)  # the cause goes away
    store.replace_task(task.model_copy(update={"parameters": {**task.parameters, "fail": False}}))
    r = requests.post(f"{host.url}/jobs/{job_id}/retry", timeout=10)
    assert r.status_code == 202 and r.json()["status"] == "processing"
    final = wait_terminal(host.url, job_id)
    assert final["status"] == "completed" and final["result_data"] == expected_hello(job_id, 3, "retry")
    assert requests.post(f"{host.url}/jobs/{job_id}/retry", timeout=10).status_code == 409

    # more than one host holds at once
    slow = post_job(host.url, {"n": 80, "sleep_ms": 1000, "message": "cancel"}, timeout=10)
    cluster.wait_event("task_started", slow)
    r = requests.post(f"{host.url}/jobs/{slow}/cancel", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    time.sleep(3)  # running tasks finish; nothing advances
    status = requests.get(f"{host.url}/jobs/status/{slow}", timeout=10).json()
    assert status["status"] == "cancelled" and status["stages"][1]["tasks"]["total"] == 0
    assert status["tasks"]["cancelled"] > 0 and status["tasks"]["queued"] == 0
    assert status["tasks"]["completed"] + status["tasks"]["cancelled"] + status["tasks"]["processing"] == 80
    assert requests.post(f"{host.url}/jobs/{slow}/cancel", timeout=10).status_code == 409
    assert requests.post(f"{host.url}/jobs/{'0' * 64}/retry", timeout=10).status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize("point", ["stage_rows_written", "task_messages_sent", "task_claimed", "handler_returned",
                                   "stage_decided", "advance_message_sent", "completion_aggregated"])
def test_kill_9_at_every_engine_point_with_real_hosts(azurite, tmp_path, point):
    result = run_with_kills(azurite, tmp_path, point)
    assert result["outcome"] == "completed", result

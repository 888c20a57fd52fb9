"""Faults against real host processes: kill -9 mid-task, Azurite restarts, poison through the host,
retry and cancel over HTTP. Slow matrices are marked ``slow``; benchmarks/chaos_report.py runs them
20 times each for the report."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from azurite_proc import Azurite
from conftest import fresh_settings, settings_env
from host_proc import HostProcess
from models import make_task_id
from repositories import Repositories
from test_http_api import wait_terminal

pytestmark = pytest.mark.chaos

FAST_RECOVERY = {"LOCAL_HOST_LEASE_SECONDS": "3", "TASK_TIME_LIMIT_S": "4", "RETRY_BASE_DELAY_S": "0.2",
                 "SWEEPER_SCHEDULE": "*/2 * * * * *", "SWEEPER_GRACE_S": "3"}


def expected(job_id: str, n: int, message: str) -> dict:
    s1 = [make_task_id(job_id, 1, i) for i in range(n)]
    s2 = [make_task_id(job_id, 2, i) for i in range(n)]
    return {"greetings": [f"{message} from {t}!" for t in s1],
            "replies": [f"{message} {a} from {b}" for a, b in zip(s1, s2)], "task_count": 2 * n}


class Cluster:
    """Hosts sharing one storage account, restartable; every host's log kept for counting events."""

    def __init__(self, azurite: Azurite, tmp: Path, extra_env: dict[str, str] | None = None,
                 with_timers: bool = True) -> None:
        self.settings = fresh_settings(azurite.connection_string)
        self.repos = Repositories(self.settings).ensure()
        self.env = {**settings_env(self.settings), **FAST_RECOVERY, **(extra_env or {})}
        self.tmp, self.hosts, self.started = tmp, [], 0
        self.with_timers = with_timers

    def start_host(self, env: dict[str, str] | None = None) -> HostProcess:
        self.started += 1
        host = HostProcess({**self.env, **(env or {})}, self.tmp / f"host{self.started}.log",
                           timers=self.with_timers).start()
        self.hosts.append(host)
        return host

    def live(self) -> list[HostProcess]:
        return [h for h in self.hosts if h.process is not None and h.process.poll() is None]

    def events(self) -> list[dict]:
        return [e for h in self.hosts for e in h.events()]

    def wait_event(self, event: str, job_id: str | None = None, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e["event"] == event and job_id in (None, e.get("job_id")):
                    return e
            time.sleep(0.1)
        raise AssertionError(f"no {event} event within {timeout}s")

    def stop(self) -> None:
        for h in self.hosts:
            h.stop()


@pytest.fixture
def cluster(azurite, tmp_path):
    c = Cluster(azurite, tmp_path)
    yield c
    c.stop()


def submit(host: HostProcess, params: dict) -> str:
    r = requests.post(f"{host.url}/jobs/submit/hello_world", json=params, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def test_kill_9_while_a_task_sleeps_in_its_handler_then_the_job_completes(cluster):
    a = cluster.start_host()
    job_id = submit(a, {"n": 2, "sleep_ms": 3000, "message": "kill"})
    cluster.wait_event("task_started", job_id)
    a.kill()
    b = cluster.start_host()
    final = wait_terminal(b.url, job_id, timeout=90)
    assert final["status"] == "completed" and final["result_data"] == expected(job_id, 2, "kill")
    attempts = [t.attempts for t in cluster.repos.store.list_tasks(job_id, 1)]
    assert max(attempts) == 2, attempts  # the killed attempt was taken over once its lease ended


def test_azurite_restarted_in_the_middle_of_a_job(tmp_path):
    storage = Azurite(location=tmp_path / "azurite").start()
    cluster = Cluster(storage, tmp_path)
    try:
        host = cluster.start_host()
        job_id = submit(host, {"n": 20, "sleep_ms": 300, "message": "restart"})
        cluster.wait_event("task_started", job_id)
        storage.stop()
        time.sleep(3)
        storage.start()  # same --location and ports: data survives
        final = wait_terminal(host.url, job_id, timeout=120)
        assert final["status"] == "completed", final
        assert final["result_data"] == expected(job_id, 20, "restart")
    finally:
        cluster.stop()
        storage.stop()


def test_always_transient_handler_ends_in_poison_through_the_host(cluster):
    host = cluster.start_host()
    job_id = submit(host, {"n": 1, "transient_failures": 100})
    final = wait_terminal(host.url, job_id, timeout=90)
    assert final["status"] == "failed"
    task = cluster.repos.store.get_task(job_id, 1, 0)
    assert task.attempts == 5 and task.error_details.startswith("gave up after 5 attempts: simulated transient")
    assert "gave up after 5 attempts" in final["error_details"]
    assert any(e["event"] == "task_gave_up" for e in cluster.events())


def test_retry_and_cancel_over_http(cluster):
    host = cluster.start_host()
    job_id = submit(host, {"n": 3, "fail_indices": [1], "message": "retry"})
    assert wait_terminal(host.url, job_id)["status"] == "failed"
    assert requests.post(f"{host.url}/jobs/{job_id}/cancel", timeout=10).status_code == 409
    store = cluster.repos.store
    task = store.get_task(job_id, 1, 1)  # the cause goes away
    store.replace_task(task.model_copy(update={"parameters": {**task.parameters, "fail": False}}))
    r = requests.post(f"{host.url}/jobs/{job_id}/retry", timeout=10)
    assert r.status_code == 202 and r.json()["status"] == "processing"
    final = wait_terminal(host.url, job_id)
    assert final["status"] == "completed" and final["result_data"] == expected(job_id, 3, "retry")
    assert requests.post(f"{host.url}/jobs/{job_id}/retry", timeout=10).status_code == 409

    slow = submit(host, {"n": 80, "sleep_ms": 1000, "message": "cancel"})  # more than one host holds at once
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


def run_with_kills(azurite, tmp: Path, point: str, mode: str = "kill", n: int = 50, hit: int = 1,
                   timeout: float = 240) -> dict:
    """hello_world n on two hosts, each of which dies (``kill``) or raises at ``point`` on its
    ``hit``-th pass; dead hosts are replaced by clean ones. Returns the outcome (completed exact /
    failed / stuck / double advance) and what it took."""
    tmp.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(azurite, tmp)
    faulty = {"GEOETL_FAULTS": f"{point}={mode}#{hit}"}
    started = time.monotonic()
    try:
        for _ in range(2):
            cluster.start_host(faulty)
        message = f"chaos-{point}-{mode}"
        job_id = None
        deadline = time.monotonic() + timeout
        while job_id is None and time.monotonic() < deadline:
            live = cluster.live()
            try:
                r = requests.post(f"{live[0].url}/jobs/submit/hello_world", json={"n": n, "message": message},
                                  timeout=10)
                job_id = r.json().get("job_id")
            except (requests.RequestException, IndexError, json.JSONDecodeError):
                time.sleep(0.5)
            while len(cluster.live()) < 2:
                cluster.start_host()
        status = None
        while time.monotonic() < deadline:
            while len(cluster.live()) < 2:
                cluster.start_host()
            job = cluster.repos.store.get_job(job_id)
            status = job.status.value if job else None
            if status in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.25)
        events = [e for e in cluster.events() if e.get("job_id") == job_id]
        advanced: dict[int, int] = {}
        for e in events:
            if e["event"] == "stage_advanced":
                advanced[e["stage"]] = advanced.get(e["stage"], 0) + 1
        rows = {s: len(cluster.repos.store.list_tasks(job_id, s, resolve=False)) for s in (1, 2)}
        job = cluster.repos.store.get_job(job_id)
        if any(v > 1 for v in advanced.values()) or any(v > n for v in rows.values()):
            outcome = "double advance"
        elif status == "completed" and job.result_data == expected(job_id, n, message):
            outcome = "completed"
        elif status == "failed":
            outcome = "failed"
        else:
            outcome = "stuck"
        return {"point": point, "mode": mode, "outcome": outcome, "status": status, "seconds":
                round(time.monotonic() - started, 1), "hosts_started": cluster.started, "advances": advanced,
                "redrives": sum(e["event"] == "sweeper_redrive" for e in events)}
    finally:
        cluster.stop()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["stage_rows_written", "task_messages_sent", "task_claimed", "handler_returned",
                                   "stage_decided", "advance_message_sent", "completion_aggregated"])
def test_kill_9_at_every_engine_point_with_real_hosts(azurite, tmp_path, point):
    result = run_with_kills(azurite, tmp_path, point)
    assert result["outcome"] == "completed", result

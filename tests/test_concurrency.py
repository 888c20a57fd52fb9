"""Several host processes, many messages in flight: every stage advances exactly once."""
from __future__ import annotations

from collections import Counter

import pytest
import requests

from config import load_host_json
from support import fresh_settings, settings_env, wait_terminal
from host_proc import HostProcess
from models import make_task_id
from repositories import Repositories

pytestmark = pytest.mark.e2e
HOSTS = 2


@pytest.fixture
def hosts(azurite, tmp_path):
    settings = fresh_settings(azurite.connection_string)
    repos = Repositories(settings).ensure()
    procs = [HostProcess(settings_env(settings), tmp_path / f"host{i}.log").start() for i in range(HOSTS)]
    yield procs, repos
    for p in procs:
        p.stop()


def run_jobs(procs, repos, repetitions: int, n: int) -> None:
    queues = load_host_json()["extensions"]["queues"]
    assert queues["batchSize"] + queues["newBatchThreshold"] >= 4  # >= 4 messages in flight per host
    for rep in range(repetitions):
        entry = procs[rep % len(procs)]
        r = requests.post(f"{entry.url}/jobs/submit/hello_world", json={"n": n, "message": f"rep{rep}"},
                          timeout=10)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        final = wait_terminal(entry.url, job_id, timeout=180)
        assert final["status"] == "completed", final
        s1 = [make_task_id(job_id, 1, i) for i in range(n)]
        assert final["result_data"]["greetings"] == [f"rep{rep} from {t}!" for t in s1]
        assert final["result_data"]["replies"][-1] == f"rep{rep} {s1[-1]} from {make_task_id(job_id, 2, n - 1)}"
        for stage in (1, 2):
            rows = repos.store.list_tasks(job_id, stage, resolve=False)
            assert len(rows) == n and len({t.task_id for t in rows}) == n  # no duplicate task rows
        events = [e for p in procs for e in p.events() if e.get("job_id") == job_id]
        received = Counter((e.get("kind"), e.get("stage")) for e in events if e["event"] == "job_message")
        assert received == {("stage", 1): 1, ("stage", 2): 1, ("complete", None): 1}, received
        advanced = Counter(e["stage"] for e in events if e["event"] == "stage_advanced")
        assert advanced == {1: 1, 2: 1}, advanced
        ran = Counter(e["task_id"] for e in events if e["event"] == "task_started")
        assert len(ran) == 2 * n and set(ran.values()) == {1}  # every task ran exactly once
    workers = [sum(e["event"] == "task_started" for e in p.events()) for p in procs]
    assert all(w > 0 for w in workers), f"a host did no work: {workers}"


def test_n200_two_hosts_five_repetitions_advance_exactly_once(hosts):
    procs, repos = hosts
    run_jobs(procs, repos, repetitions=5, n=200)


@pytest.mark.slow
def test_soak_n1000_two_hosts(hosts):
    procs, repos = hosts
    run_jobs(procs, repos, repetitions=3, n=1000)

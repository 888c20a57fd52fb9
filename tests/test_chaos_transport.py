"""Transport faults at every storage request, against real host processes (issue #10's randomised test).

Two local hosts (sweeper on, short grace) share a private Azurite; every storage request the app makes
may lose its reply after being applied or fail before it (``GEOETL_TRANSPORT_FAULTS`` in the hosts'
environment, seeded), optionally with a kill -9 at an engine fault point. A run ends ``exact`` only
when the job completed with the exact ``result_data``, every stage advanced exactly once (counted from
every host's ``stage_advanced`` events), and every queue (jobs, tasks, their -poison and -poison-poison
queues) is empty, delayed messages included: a queue's approximate count includes invisible messages,
so the run waits for deferred duplicates to be delivered and dropped by the still-running hosts.

``run_transport`` is shared with tests/test_chaos_soak.py (slow) and benchmarks/chaos_report.py. Run
clusters one at a time on one Azurite: local hosts claim timer occurrences in the account's
``azure-webjobs-hosts`` container by function name only, so a concurrent cluster's host can take (and
spend on its own tables) the sweeper occurrence of this one.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from test_chaos_processes import Cluster, expected

pytestmark = pytest.mark.chaos

SEEDS = (11, 22, 33)
TERMINAL = ("completed", "failed", "cancelled")
# Sweeper every 2 s with 3 s grace; a queued task whose message is gone is re-driven after
# grace + RETRY_MAX_DELAY_S, so the retry cap is short too (the default 120 s would look like a stall).
TRANSPORT_RECOVERY = {"RETRY_MAX_DELAY_S": "2"}


def fault_spec(seed: int | str, lose: float, fail: float) -> str:
    """The hosts' ``GEOETL_TRANSPORT_FAULTS`` value."""
    return f"lose={lose},fail={fail},seed={seed}"


@dataclass
class JobSpec:
    """What to submit and how to check its result (``check(job_id, result_data)``); ``env`` is added to
    every host's environment and ``prepare(cluster)`` runs before the hosts start (inputs, containers)."""

    job_type: str
    params: dict[str, Any]
    check: Callable[[str, Any], bool]
    tasks_per_stage: int  # at most; more rows in a stage would mean it was planned twice
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Cluster], None] | None = None


def hello_job(n: int, message: str) -> JobSpec:
    """hello_world n, checked against ``expected``."""
    return JobSpec("hello_world", {"n": n, "message": message},
                   lambda job_id, result: result == expected(job_id, n, message), n)


@dataclass
class Outcome:
    """One run: its verdict and what it took."""

    seed: int | str
    outcome: str = "stuck"
    status: str | None = None
    seconds: float | None = None  # submit accepted -> job terminal
    advances: dict[int, int] = field(default_factory=dict)
    leftover: dict[str, int] = field(default_factory=dict)  # after the drain, invisible ones included
    leftover_visible: dict[str, int] = field(default_factory=dict)
    redrives: int = 0
    resent: dict[str, int] = field(default_factory=dict)  # sweeper actions (resent_stage, resent_advance, ...)
    ignored: int = 0  # task messages found already ended (duplicates): the cost of redelivery
    stage_messages: int = 0  # stage-message invocations (2 without duplicates for hello_world)
    injected: dict[str, int] = field(default_factory=dict)
    process_seeds: list[int] = field(default_factory=list)  # per host, in start order: process_seed=N replays one
    hosts_started: int = 0
    kill: str | None = None
    job_id: str | None = None
    error: str | None = None
    logs: str | None = None

    @property
    def exact(self) -> bool:
        """Completed with the exact result, one advance per stage, nothing left in any queue."""
        return self.outcome == "completed"


def queue_names(cluster: Cluster) -> list[str]:
    """Every queue a job's messages can be in: jobs, tasks, their -poison and -poison-poison queues."""
    s = cluster.settings
    return [s.jobs_queue, s.tasks_queue, *(f"{q}-poison" for q in (s.jobs_queue, s.tasks_queue)),
            *(f"{q}-poison-poison" for q in (s.jobs_queue, s.tasks_queue))]


def queue_depths(cluster: Cluster, visible: bool = False) -> dict[str, int]:
    """Approximate message count of every existing queue of the cluster: invisible messages (delayed,
    or held by a running invocation) included, or with ``visible`` only the ones a peek sees."""
    service = cluster.repos.clients.queues
    existing = {q.name for q in service.list_queues()}
    counts = {}
    for name in (n for n in queue_names(cluster) if n in existing):
        queue = service.get_queue_client(name)
        counts[name] = (len(queue.peek_messages(max_messages=32)) if visible
                        else queue.get_queue_properties().approximate_message_count)
    return counts


def submit_until_accepted(cluster: Cluster, spec: JobSpec, deadline: float,
                          keep_alive: Callable[[], None]) -> str:
    """Submit over HTTP to a live host, again on a storage fault (a 5xx) or a dead host (a kill at
    ``job_row_written``): submit is idempotent (the job id is a hash of the parameters)."""
    last = None
    while time.monotonic() < deadline:
        keep_alive()
        live = cluster.live()
        if live:
            try:
                r = requests.post(f"{live[0].url}/jobs/submit/{spec.job_type}", json=spec.params, timeout=60)
                if r.status_code in (200, 202):
                    return r.json()["job_id"]
                last = f"{r.status_code} {r.text[:300]}"
            except (requests.RequestException, json.JSONDecodeError) as exc:
                last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"submit never accepted: {last}")


def run_transport(azurite, tmp: Path, seed: int | str, *, lose: float = 0.02, fail: float = 0.02,
                  spec: JobSpec | None = None, kill: str | None = None, hosts: int = 2, timeout: float = 240,
                  drain_s: float = 45, extra_env: dict[str, str] | None = None) -> Outcome:
    """One job under transport faults on ``hosts`` live hosts (a ``kill`` point such as
    ``"task_claimed=kill#3"`` makes each first-generation host die there once; dead hosts are replaced
    by hosts with the same transport faults and no kill point). Returns its outcome."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = spec or hello_job(100, f"transport-{seed}")
    env = {**TRANSPORT_RECOVERY, "GEOETL_TRANSPORT_FAULTS": fault_spec(seed, lose, fail), **spec.env,
           **(extra_env or {})}
    cluster = Cluster(azurite, tmp, extra_env=env)
    result = Outcome(seed=seed, kill=kill)
    first = {"GEOETL_FAULTS": kill} if kill else {}
    try:
        if spec.prepare is not None:
            spec.prepare(cluster)
        for _ in range(hosts):
            cluster.start_host(first)
        deadline = time.monotonic() + timeout

        def keep_alive() -> None:
            while len(cluster.live()) < hosts:
                cluster.start_host()

        job_id = result.job_id = submit_until_accepted(cluster, spec, deadline, keep_alive)
        started = time.monotonic()
        status = None
        while time.monotonic() < deadline:
            keep_alive()
            job = cluster.repos.store.get_job(job_id)
            status = job.status.value if job else None
            if status in TERMINAL:
                result.seconds = round(time.monotonic() - started, 1)
                break
            time.sleep(0.25)
        result.status = status
        if status in TERMINAL:  # deferred duplicates drain while the hosts still run
            drain_until = time.monotonic() + drain_s
            while any(queue_depths(cluster).values()) and time.monotonic() < drain_until:
                keep_alive()
                time.sleep(0.5)
            result.leftover = {k: v for k, v in queue_depths(cluster).items() if v}
            result.leftover_visible = {k: v for k, v in queue_depths(cluster, visible=True).items() if v}
        events = cluster.events()
        mine = [e for e in events if e.get("job_id") == job_id]
        for e in mine:
            if e["event"] == "stage_advanced":
                result.advances[e["stage"]] = result.advances.get(e["stage"], 0) + 1
        result.redrives = sum(e["event"] == "sweeper_redrive" for e in mine)
        for e in mine:
            for action in e.get("actions", []) if e["event"] == "sweeper_redrive" else []:
                result.resent[action] = result.resent.get(action, 0) + 1
        result.ignored = sum(e["event"] == "task_message_ignored" for e in mine)
        result.stage_messages = sum(e["event"] == "job_message" and e.get("kind") == "stage" for e in mine)
        for e in events:
            if e["event"] == "transport_fault":
                result.injected[e["mode"]] = result.injected.get(e["mode"], 0) + 1
        result.process_seeds = [e["process_seed"] for h in cluster.hosts for e in h.events()
                                if e["event"] == "transport_faults_enabled"]
        result.hosts_started = cluster.started
        job = cluster.repos.store.get_job(job_id)
        stages = range(1, job.total_stages + 1)  # the job type's stages, as the engine recorded them
        rows = {s: len(cluster.repos.store.list_tasks(job_id, s, resolve=False)) for s in stages}
        # A host killed between a stage's end and its stage_advanced line (at stage_decided or
        # advance_message_sent, or at any point by another thread of the same process) never logs that
        # advance: the sweeper re-sends it (resent_advance / resent_completion) or the message was out.
        # After a kill, then, only "at most one" is checkable from the logs; the exact result shows it came.
        unlogged_ok = cluster.started > hosts
        if any(v > 1 for v in result.advances.values()) or any(v > spec.tasks_per_stage for v in rows.values()):
            result.outcome = "double advance"
        elif status == "failed":
            result.outcome, result.error = "failed", job.error_details
        elif status != "completed":
            result.outcome = "stuck"
        elif not spec.check(job_id, job.result_data):
            result.outcome = "wrong result"
        elif any(result.advances.get(s, 0) != 1 for s in stages) and not unlogged_ok:
            result.outcome = "advance not logged"
        elif result.leftover:
            result.outcome = "messages left"
        else:
            result.outcome = "completed"
        return result
    finally:  # everything was read: no need to wait for running invocations (each run has its own queues)
        for host in cluster.hosts:
            host.kill()
        result.logs = str(tmp)


def describe(result: Outcome) -> str:
    """A failure message naming the seed (to replay) and where the host logs are."""
    return (f"seed {result.seed} ({result.kill or 'no kill'}): {result.outcome}, status {result.status}, "
            f"advances {result.advances}, leftover {result.leftover} (visible {result.leftover_visible}), "
            f"stage messages {result.stage_messages}, duplicate task messages {result.ignored}, "
            f"redrives {result.redrives} {result.resent}, seconds {result.seconds}, "
            f"hosts started {result.hosts_started} (process seeds {result.process_seeds}), "
            f"injected {result.injected}, error {result.error!r}; host logs in {result.logs}")


@pytest.mark.parametrize("seed", SEEDS)
def test_hello_world_100_under_2pct_lost_replies_and_2pct_failures(azurite, tmp_path, seed):
    """Two hosts, sweeper on, 2 % lost replies + 2 % failures before apply on every storage request."""
    result = run_transport(azurite, tmp_path, seed, lose=0.02, fail=0.02, timeout=180)
    print(describe(result))  # shown with -rA: times, duplicates and re-drives of a passing run too
    assert sum(result.injected.values()) > 0, describe(result)  # the faults were really on
    assert result.exact, describe(result)

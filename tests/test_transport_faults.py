"""The transport fault injector against real Azurite: what each mode does to each kind of storage write,
what the SDKs' retry policies make of it, seeded replay, and no injector when nothing is configured."""
from __future__ import annotations

import time

import pytest
import requests
from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

import repository_faults
from errors import ConflictError, TransientError
from host_proc import HostProcess
from support import settings_env
from repository_batch import submit_transaction
from repository_clients import StorageClients, translate_errors
from repository_faults import FaultSpec, TransportFaults

PK = "p"


@pytest.fixture
def faults():
    """An injector with no random faults, installed for clients built during the test."""
    injector = TransportFaults(FaultSpec(process_seed=7))
    previous = repository_faults.install(injector)
    yield injector
    repository_faults.install(previous)


@pytest.fixture
def clients(settings, faults) -> StorageClients:
    """Storage clients built after the injector was installed."""
    return StorageClients(settings)


@pytest.fixture
def table(clients, settings):
    """A fresh table behind the injector."""
    return clients.tables.create_table(settings.tasks_table)


def row(table, key: str) -> dict | None:
    try:
        return table.get_entity(PK, key)
    except ResourceNotFoundError:
        return None


def test_lost_reply_on_conditional_replace_comes_back_412_on_our_own_write(table, faults):
    table.create_entity({"PartitionKey": PK, "RowKey": "r", "status": "queued"})
    etag = table.get_entity(PK, "r").metadata["etag"]
    faults.arm("lose", method="PUT", match=table.table_name)
    with pytest.raises(ConflictError) as caught, translate_errors("release"):
        table.update_entity({"PartitionKey": PK, "RowKey": "r", "status": "processing"}, etag=etag,
                            mode=UpdateMode.REPLACE, match_condition=MatchConditions.IfNotModified)
    assert isinstance(caught.value.__cause__, ResourceModifiedError)  # the SDK re-sent the PUT: 412
    assert caught.value.__cause__.status_code == 412
    assert row(table, "r")["status"] == "processing"  # ...on a write that had landed
    assert faults.counts()["lose"] == 1 and faults.armed() == 0
    assert [(f.mode, f.method) for f in faults.history] == [("lose", "PUT")]


def test_lost_reply_on_delete_is_resent_and_the_sdk_hides_the_404(table, faults):
    table.create_entity({"PartitionKey": PK, "RowKey": "r"})
    etag = table.get_entity(PK, "r").metadata["etag"]
    faults.arm("lose", method="DELETE")
    before = faults.counts()["requests"]
    table.delete_entity(PK, "r", etag=etag, match_condition=MatchConditions.IfNotModified)  # no error
    assert faults.counts()["requests"] - before == 2  # re-sent: 404, which delete_entity ignores
    assert row(table, "r") is None


@pytest.mark.parametrize("op, method", [("create", "POST"), ("merge", "PATCH")])
def test_lost_reply_on_post_or_merge_is_not_resent_and_surfaces_transient(table, faults, op, method):
    if op == "merge":
        table.create_entity({"PartitionKey": PK, "RowKey": "r", "a": 1})
    faults.arm("lose", method=method)
    before = faults.counts()["requests"]
    with pytest.raises(TransientError, match=r"\(ServiceResponseError\)"), translate_errors(op):
        if op == "create":
            table.create_entity({"PartitionKey": PK, "RowKey": "r", "b": 2})
        else:
            table.update_entity({"PartitionKey": PK, "RowKey": "r", "b": 2}, mode=UpdateMode.MERGE)
    assert faults.counts()["requests"] - before == 1  # no retry was sent
    assert row(table, "r")["b"] == 2  # applied, though the caller saw an error


@pytest.mark.parametrize("submit", [lambda table, ops: table.submit_transaction(ops), submit_transaction],
                         ids=["sdk", "repository_batch"])
def test_lost_reply_on_transaction_surfaces_error_while_committed(table, faults, submit):
    ops = [("create", {"PartitionKey": PK, "RowKey": f"t{i}", "n": i}) for i in range(3)]
    faults.arm("lose", method="POST", match="$batch")
    with pytest.raises(TransientError, match=r"\(ServiceResponseError\)"), translate_errors("commit"):
        submit(table, ops)
    assert [row(table, f"t{i}")["n"] for i in range(3)] == [0, 1, 2]
    assert faults.counts()["lose"] == 1 and [f.method for f in faults.history] == ["POST"]


def test_lost_reply_on_queue_send_enqueues_the_message_twice(clients, settings, faults):
    """The queue SDK retries every method after a connection error, POST included (after our short backoff)."""
    queue = clients.queues.get_queue_client(settings.tasks_queue)
    queue.create_queue()
    faults.arm("lose", method="POST", match=f"{settings.tasks_queue}/messages")
    started = time.monotonic()
    queue.send_message("hello")  # no error: the retry's reply arrived
    assert 1 <= time.monotonic() - started < 10  # our backoff, 2 s +/- 0.5 (the SDK's default is 15 s)
    bodies = [m.content for m in queue.receive_messages(max_messages=32, messages_per_page=32)]
    assert bodies == ["hello", "hello"]


@pytest.mark.parametrize("mode, cause", [("busy", "storage answered 503"),
                                         ("refuse", r"unreachable \(ServiceRequestError\)")])
def test_fail_before_apply_writes_nothing(table, faults, mode, cause):
    faults.arm(mode, method="POST", times=10)
    with pytest.raises(TransientError, match=cause), translate_errors("create"):
        table.create_entity({"PartitionKey": PK, "RowKey": "r"})
    assert row(table, "r") is None
    # a 503 is retried even for POST (3 status retries); a connection error on POST is not
    assert faults.counts()[mode] == (4 if mode == "busy" else 1)
    faults.disarm()


def test_each_retry_is_a_fresh_request_that_can_fault_again(table, faults):
    table.create_entity({"PartitionKey": PK, "RowKey": "r", "v": 0})
    faults.arm("busy", method="PUT", times=1)
    faults.arm("refuse", method="PUT", times=1)
    before = faults.counts()["requests"]
    table.upsert_entity({"PartitionKey": PK, "RowKey": "r", "v": 1}, mode=UpdateMode.REPLACE)
    assert faults.counts()["requests"] - before == 3  # busy, refuse, then success
    assert [f.mode for f in faults.history] == ["busy", "refuse"]
    assert row(table, "r")["v"] == 1


def test_delay_slows_requests_down(clients, settings):
    faults = TransportFaults(FaultSpec(delay=1.0, delay_s=0.3, services={"table"}, process_seed=1))
    previous = repository_faults.install(faults)
    try:
        table = StorageClients(settings).tables.create_table(settings.tasks_table)
        started = time.monotonic()
        table.create_entity({"PartitionKey": PK, "RowKey": "r"})
        assert time.monotonic() - started >= 0.3
        assert faults.counts()["delay"] == 2 and row(table, "r") is not None
    finally:
        repository_faults.install(previous)


def test_same_seed_and_requests_replay_the_same_faults():
    spec = FaultSpec(lose=0.1, busy=0.1, refuse=0.1, delay=0.1, seed="42")
    requests_ = [("table", "PUT" if i % 3 else "POST", f"http://h/acct/t(PartitionKey='p',RowKey='{i}')")
                 for i in range(300)]

    def run(faults: TransportFaults) -> list:
        return [faults.decide(*r) for r in requests_]

    first, again = run(TransportFaults(spec, pid=100)), run(TransportFaults(spec, pid=100))
    assert first == again and 90 < sum(f is not None for f in first) < 150
    replayed = TransportFaults(FaultSpec(**{**spec.model_dump(), "process_seed": TransportFaults(spec, pid=100)
                                            .process_seed}))
    assert run(replayed) == first  # process_seed from the log replays the process
    assert run(TransportFaults(spec, pid=101)) != first  # another host of the same run draws differently


def test_seeded_run_against_azurite_replays_identically(settings):
    """The same seed over the same request sequence: the same faults, retries included."""

    def run(suffix: str) -> list:
        faults = TransportFaults(FaultSpec(lose=0.1, busy=0.1, seed="3"), pid=1)
        previous = repository_faults.install(faults)
        try:
            table = StorageClients(settings).tables.create_table(settings.tasks_table + suffix)
            outcomes = []
            for i in range(30):
                entity = {"PartitionKey": PK, "RowKey": str(i // 2), "i": i}
                try:
                    with translate_errors("write"):
                        if i % 2:
                            table.upsert_entity(entity, mode=UpdateMode.REPLACE)  # PUT: re-sent
                        else:
                            table.create_entity(entity)  # POST: a lost reply surfaces
                    outcomes.append("ok")
                except TransientError:
                    outcomes.append("error")
            return [outcomes, [(f.seq, f.mode, f.method) for f in faults.history]]
        finally:
            repository_faults.install(previous)

    first = run("a")
    assert "error" in first[0] and {"lose", "busy"} <= {mode for _, mode, _ in first[1]}
    assert run("b") == first


def test_nothing_configured_means_no_injector(settings, monkeypatch):
    monkeypatch.delenv(repository_faults.ENV, raising=False)
    previous = repository_faults.install(None)
    try:
        assert repository_faults.active() is None
        clients = StorageClients(settings)
        assert all(clients._kwargs(s)["transport"]._faults is None for s in ("table", "queue", "blob"))
        clients.tables.create_table(settings.tasks_table)  # and plain requests still work
        with pytest.raises(RuntimeError):
            repository_faults.arm("lose")
    finally:
        repository_faults.install(previous)
    only_tables = TransportFaults(FaultSpec(services={"table"}))
    previous = repository_faults.install(only_tables)
    try:
        clients = StorageClients(settings)
        assert clients._kwargs("table")["transport"]._faults is only_tables
        assert clients._kwargs("queue")["transport"]._faults is None
    finally:
        repository_faults.install(previous)


def test_spec_from_the_environment_variable():
    spec = FaultSpec.parse("lose=0.02,fail=0.02,delay=0.01:200ms,seed=42,services=table+queue")
    assert (spec.lose, spec.busy, spec.refuse, spec.delay, spec.delay_s) == (0.02, 0.01, 0.01, 0.01, 0.2)
    assert spec.seed == "42" and spec.services == {"table", "queue"}
    assert FaultSpec.parse("delay=1:2s,process_seed=9").delay_s == 2 and FaultSpec.parse("").lose == 0
    for bad in ("lose=0.6,fail=0.6", "drop=0.1", "services=table+disk", "lose=x"):
        with pytest.raises(ValueError):
            FaultSpec.parse(bad)


def test_host_process_takes_the_variable_from_its_environment(repos, settings, tmp_path):
    """The app's clients in a host process fault as the variable says (the local host's own trigger
    pollers use clients of their own, as the Functions host would, and do not)."""
    env = {**settings_env(settings), repository_faults.ENV: "delay=1:1ms,seed=5,services=table"}
    host = HostProcess(env, tmp_path / "host.log", functions=["health"]).start()
    try:
        assert requests.get(f"{host.url}/health", timeout=30).status_code == 200  # builds the app's clients
        events = host.events()
    finally:
        host.stop()
    enabled = [e for e in events if e["event"] == "transport_faults_enabled"]
    assert len(enabled) == 1 and enabled[0]["seed"] == "5" and enabled[0]["services"] == "table"
    faults = [e for e in events if e["event"] == "transport_fault"]
    assert faults and {(e["mode"], e["service"]) for e in faults} == {("delay", "table")}

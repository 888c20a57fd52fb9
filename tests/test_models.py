"""Unit tests of pure logic: status table, job ids, keys, entity limits, messages, batching."""
from __future__ import annotations

import itertools

import pytest

from errors import EntityTooLargeError, InvalidKeyError, InvalidTransitionError
from models import (
    TERMINAL, TRANSITIONS, CompletionMessage, StageMessage, Status, TaskMessage, TaskRecord, canonical_json,
    check_transition, decode_job_message, decode_task_message, make_job_id, make_task_id, parse_task_id,
)
from repository_entities import from_entity, to_entity
from repository_rules import (
    BATCH_MAX_BYTES, BATCH_MAX_OPERATIONS, MAX_ENTITY_BYTES, check_entity_limits, chunk_for_transactions, entity_bytes,
    validate_key,
)

from config import Settings
from controller_factory import get_controller


# ---------------------------------------------------------------- status
def test_transition_table_is_explicit_and_terminal_states_stay_put():
    allowed = {(a, b) for a, nexts in TRANSITIONS.items() for b in nexts}
    Q, P, C, F, X = Status.QUEUED, Status.PROCESSING, Status.COMPLETED, Status.FAILED, Status.CANCELLED
    assert allowed == {(Q, P), (Q, F), (Q, X), (P, C), (P, F), (P, X), (P, Q)}
    assert TERMINAL == {C, F, X}
    for a, b in itertools.product(Status, Status):
        if (a, b) in allowed:
            check_transition(a, b)
        else:
            with pytest.raises(InvalidTransitionError):
                check_transition(a, b)


def test_only_the_retry_path_reopens_a_failed_job():
    with pytest.raises(InvalidTransitionError):
        check_transition(Status.FAILED, Status.PROCESSING)
    check_transition(Status.FAILED, Status.PROCESSING, retry=True)
    check_transition(Status.FAILED, Status.QUEUED, retry=True)
    for terminal in (Status.COMPLETED, Status.CANCELLED):
        with pytest.raises(InvalidTransitionError):
            check_transition(terminal, Status.PROCESSING, retry=True)


# ---------------------------------------------------------------- job ids
def _job_id(raw: dict) -> str:
    controller = get_controller("hello_world")
    return make_job_id("hello_world", controller.validate(raw, Settings()).model_dump(mode="json"))


def test_job_id_ignores_key_order_and_omitted_defaults():
    a = _job_id({"n": 3, "message": "hello"})
    assert a == _job_id({"message": "hello", "n": 3}) == _job_id({}) == _job_id({"n": 3})
    assert a != _job_id({"n": 4})
    assert a != _job_id({"message": "hello!"})


def test_job_id_is_sha256_of_canonical_json():
    import hashlib

    params = {"n": 3, "message": "hello", "fail_indices": [], "sleep_ms": 0, "transient_failures": 0}
    expected = hashlib.sha256(
        canonical_json({"job_type": "hello_world", "parameters": params}).encode()).hexdigest()
    assert _job_id({}) == expected
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == '{"a":[1,{"c":3,"d":2}],"b":1}'
    assert make_job_id("other_type", params) != expected


# ---------------------------------------------------------------- keys
@pytest.mark.parametrize("bad", ["a/b", "a\\b", "a#b", "a?b", "tab\there", "nul\x00", "\x7f", "", "x" * 1025])
def test_forbidden_table_keys_are_refused(bad):
    with pytest.raises(InvalidKeyError):
        validate_key(bad)


@pytest.mark.parametrize("good", ["job", "stage-01", "task-01-000001", "ünïcode-ok", "x" * 1024])
def test_valid_table_keys_pass(good):
    assert validate_key(good) == good


def test_task_ids_round_trip_and_sort():
    job = "ab" * 32
    ids = [make_task_id(job, s, i) for s in (1, 2, 10) for i in (0, 9, 10, 123456)]
    assert ids == sorted(ids)
    for tid in ids:
        prefix, stage, index = parse_task_id(tid)
        assert make_task_id(job, stage, index) == tid and prefix == job[:12]
    with pytest.raises(InvalidKeyError):
        parse_task_id("not-a-task")


# ---------------------------------------------------------------- entity limits
def test_entity_size_counts_utf16():
    ascii_entity = {"PartitionKey": "p", "RowKey": "r", "name": "abcd"}
    # 4 + 2*(1+1) + (8 + 2*4 + 4 + 2*4)
    assert entity_bytes(ascii_entity) == 4 + 4 + 8 + 8 + 4 + 8
    emoji = {"PartitionKey": "p", "RowKey": "r", "name": "\U0001F600"}  # 2 UTF-16 code units
    assert entity_bytes(emoji) == 4 + 4 + 8 + 8 + 4 + 4


def test_entity_limits_enforced_like_azure():
    base = {"PartitionKey": "p", "RowKey": "r"}
    check_entity_limits({**base, **{f"p{i}": i for i in range(252)}})
    with pytest.raises(EntityTooLargeError, match="252"):
        check_entity_limits({**base, **{f"p{i}": i for i in range(253)}})
    with pytest.raises(EntityTooLargeError, match="64 KiB"):
        check_entity_limits({**base, "big": "x" * (32 * 1024 + 1)})  # 64 KiB + 2 bytes in UTF-16
    check_entity_limits({**base, "ok": "x" * (32 * 1024)})
    many = {**base, **{f"p{i}": "y" * 32_000 for i in range(17)}}  # each under 64 KiB, together over 1 MiB
    assert entity_bytes(many) > MAX_ENTITY_BYTES
    with pytest.raises(EntityTooLargeError, match="1048576"):
        check_entity_limits(many)


def test_task_row_round_trips_through_entity():
    task = TaskRecord(job_id="f" * 64, task_id=make_task_id("f" * 64, 1, 7), stage=1, index=7, shard=7,
                      task_type="hello_greeting", parameters={"message": "hi", "nested": [1, {"a": None}]},
                      result={"greeting": "hi"}, status=Status.COMPLETED, attempts=2)
    entity = to_entity(task)
    assert entity["RowKey"] == "task-01-000007" and entity["status"] == "completed"
    assert isinstance(entity["parameters"], str)
    back = from_entity(TaskRecord, entity, etag="W/1")
    assert back.model_dump() == task.model_dump() and back.etag == "W/1"


# ---------------------------------------------------------------- messages
def test_messages_encode_and_decode_symmetrically():
    for msg in (StageMessage(job_id="a" * 64, stage=2), CompletionMessage(job_id="b" * 64)):
        assert decode_job_message(msg.encode()) == msg
    task = TaskMessage(job_id="c" * 64, task_id=make_task_id("c" * 64, 1, 1))
    assert decode_task_message(task.encode()) == task
    assert len(StageMessage(job_id="a" * 64, stage=99).encode()) < 200  # ids only, whatever n is
    with pytest.raises(ValueError, match="kind"):
        decode_job_message('{"kind": "bogus", "job_id": "x"}')


# ---------------------------------------------------------------- transaction batching
def test_batches_respect_count_and_size_limits():
    small = [{"PartitionKey": "p", "RowKey": f"r{i:04d}", "v": "x"} for i in range(250)]
    batches = chunk_for_transactions(small)
    assert [len(b) for b in batches] == [100, 100, 50]
    big = [{"PartitionKey": "p", "RowKey": f"r{i:04d}", "v": "x" * 30_000} for i in range(120)]
    batches = chunk_for_transactions(big)
    assert all(len(b) <= BATCH_MAX_OPERATIONS for b in batches)
    assert all(sum(entity_bytes(e) for e in b) <= BATCH_MAX_BYTES for b in batches)
    assert [e for b in batches for e in b] == big  # deterministic, order kept, nothing lost
    assert chunk_for_transactions(big) == batches


def test_logs_and_errors_never_carry_secrets():
    from logs import redact

    sas = "https://acct.blob.core.windows.net/c/b.tif?se=2026-01-01&sp=r&sv=2024-05-04&sr=b&sig=AbC%2Bdef%3D"
    assert "AbC" not in redact(f"corrupt raster: /vsicurl/{sas}: read error")
    conn = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;EndpointSuffix=x"
    assert "c2VjcmV0a2V5" not in redact(conn) and "AccountName=acct" in redact(conn)
    assert "hunter2" not in redact("host=db password=hunter2 dbname=postgis")
    assert redact("nothing secret here: stage 1 failed") == "nothing secret here: stage 1 failed"


def test_an_unresolved_key_vault_reference_is_not_taken_as_the_secret():
    from config import Settings

    s = Settings(webhook_secret="@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/w)",
                 pgstac_password="real")
    assert s.webhook_secret.get_secret_value() == "" and s.pgstac_password.get_secret_value() == "real"

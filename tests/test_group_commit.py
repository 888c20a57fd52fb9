"""Group commit: concurrent task invocations of one job share round trips, and stay exactly once."""
from __future__ import annotations


import pytest

import repository_faults
from support import fanned_out, fresh_settings, together
from engine_counters import Change
from engine_group_commit import GroupCommit, TaskWrite
from errors import ConflictError
from models import Status
from repositories import Repositories
from task_manager import Engine


def count_calls(monkeypatch, obj, name: str) -> list:
    calls = []
    real = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def claim(engine: Engine, task) -> TaskWrite:
    row = task.model_copy(update={"status": Status.PROCESSING, "attempts": 1})
    return engine.commits.write(task.job_id, TaskWrite("claim", row, Change(task.shard, started=1)))


def test_concurrent_reads_share_range_queries(engine, monkeypatch):
    job_id = fanned_out(engine, 48)
    queries = count_calls(monkeypatch, engine.store, "task_range")
    rows = together(lambda i: engine.commits.read(job_id, 1, i), list(range(48)))
    assert [r.index for r in rows] == list(range(48))
    assert len(queries) < 48 / 4, f"{len(queries)} range queries for 48 reads"


def test_concurrent_claims_and_ends_share_transactions_and_one_ends_the_stage(engine, monkeypatch):
    job_id = fanned_out(engine, 40)
    tasks = engine.store.list_tasks(job_id, 1)
    commits = count_calls(monkeypatch, engine.store, "commit_rows")
    claimed = [w.written for w in together(lambda t: claim(engine, t), tasks)]
    assert all(t.status == Status.PROCESSING for t in claimed)
    ended = together(lambda t: engine.commits.write(job_id, TaskWrite(
        "end", t.model_copy(update={"status": Status.COMPLETED, "result": {"greeting": "x"}}),
        Change(t.shard, ended=Status.COMPLETED))), claimed)
    assert len(commits) < 80 / 4, f"{len(commits)} transactions for 80 writes"
    assert sum(w.finished is not None for w in ended) == 1
    stage = engine.store.get_stage(job_id, 1)
    assert stage.status == Status.COMPLETED and stage.completed == 40 and stage.shards_remaining == 0
    _, shards = engine.store.stage_counters(job_id, 1)
    assert sum(s.started for s in shards.values()) == 40


def test_a_stale_row_fails_only_its_own_write(engine):
    job_id = fanned_out(engine, 12)
    tasks = engine.store.list_tasks(job_id, 1)
    moved = engine.store.replace_task(tasks[5].model_copy(update={"last_error": "someone else wrote"}))
    assert moved.etag != tasks[5].etag
    results = together(lambda t: claim(engine, t), tasks)
    assert isinstance(results[5], ConflictError)
    assert all(isinstance(r, TaskWrite) for i, r in enumerate(results) if i != 5)
    rows = engine.store.list_tasks(job_id, 1)
    assert [r.status for r in rows].count(Status.PROCESSING) == 11 and rows[5].status == Status.QUEUED
    _, shards = engine.store.stage_counters(job_id, 1)
    assert sum(s.started for s in shards.values()) == 11  # the failed claim counted nothing


def test_large_rows_are_split_across_transactions(engine):
    job_id = fanned_out(engine, 30)
    tasks = [w.written for w in together(lambda t: claim(engine, t), engine.store.list_tasks(job_id, 1))]
    big = {"text": "雨" * 25_000}  # 150 KB on the wire each (\\uXXXX): 30 of them are over 4 MiB
    ended = together(lambda t: engine.commits.write(job_id, TaskWrite(
        "end", t.model_copy(update={"status": Status.COMPLETED, "result": big}),
        Change(t.shard, ended=Status.COMPLETED))), tasks)
    assert all(isinstance(w, TaskWrite) for w in ended), ended
    assert engine.store.get_stage(job_id, 1).completed == 30
    assert engine.store.get_task(job_id, 1, 7).result == big


@pytest.fixture
def faulty_engine(azurite):
    faults = repository_faults.TransportFaults(repository_faults.FaultSpec(seed="1"))
    repository_faults.install(faults)
    try:
        yield Engine(Repositories(fresh_settings(azurite.connection_string)).ensure()), faults
    finally:
        repository_faults.install(None)


def test_a_lost_reply_of_a_shared_transaction_is_recognised_for_every_caller(faulty_engine):
    engine, faults = faulty_engine
    job_id = fanned_out(engine, 16)
    tasks = [w.written for w in together(lambda t: claim(engine, t), engine.store.list_tasks(job_id, 1))]
    faults.arm("lose", method="POST", match="$batch", times=1)
    ended = together(lambda t: engine.commits.write(job_id, TaskWrite(
        "end", t.model_copy(update={"status": Status.COMPLETED, "result": {"ok": True}}),
        Change(t.shard, ended=Status.COMPLETED))), tasks)
    assert faults.counts().get("lose") == 1
    assert all(isinstance(w, TaskWrite) for w in ended), ended
    assert sum(w.finished is not None for w in ended) == 1
    stage = engine.store.get_stage(job_id, 1)
    assert stage.completed == 16 and stage.status == Status.COMPLETED  # counted once, not twice


def test_one_group_commit_per_engine_and_lone_writes_pay_no_wait(engine):
    assert isinstance(engine.commits, GroupCommit)
    job_id = fanned_out(engine, 1)
    task = engine.commits.read(job_id, 1, 0)
    assert claim(engine, task).written.status == Status.PROCESSING

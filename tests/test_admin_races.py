"""Operator races (issue 20, cases 4, 5, 9a, 9c), in-process against real Azurite through the real engine:
a cancel during a fan-out, a retry repeated after a crash part-way, a redelivered fan-out continuation,
and the counters after a retry."""
from __future__ import annotations

import dataclasses
import threading

import pytest

import api_jobs
import engine_faults
from support import expected_hello, fresh_settings, submit, take_job_message
from controller_factory import TASK_HANDLERS
from errors import ConflictError
from models import Status, TaskMessage, decode_task_message, make_task_id
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine

FAILING = [0, 1, 2, 3, 5]  # 20 tasks over 4 counter shards (index % 4): every shard has a failure


@pytest.fixture
def engine(azurite):
    settings = fresh_settings(azurite.connection_string, retry_base_delay_s=0, retry_max_delay_s=0,
                              sweeper_grace_s=0, fanout_chunk=100)
    yield Engine(Repositories(settings).ensure())
    engine_faults.disarm()


def queued_task_ids(engine: Engine) -> list[str]:
    """Every task id waiting in the tasks queue (received out of sight)."""
    client, ids = engine.repos.tasks_queue.client, []
    while batch := list(client.receive_messages(max_messages=32, messages_per_page=32, visibility_timeout=300)):
        for m in batch:
            msg = decode_task_message(m.content)
            ids += [s.task_id for s in msg.singles()]
    return ids


# ---------------------------------------------------------------- 4: cancel during a fan-out
def test_after_a_cancel_is_acknowledged_no_handler_starts_even_for_tasks_a_fan_out_writes_later(
        engine, monkeypatch):
    """The cancel lands while a fan-out chunk is in flight: that chunk still writes its rows and sends their
    messages after the cancel has listed (and flipped) the queued tasks. None of them may start."""
    acked = threading.Event()
    starts: list[tuple[int, bool]] = []
    greeting = TASK_HANDLERS["hello_greeting"]

    def counted(p, ctx):
        starts.append((ctx.index, acked.is_set()))
        return greeting.run(p, ctx)

    monkeypatch.setitem(TASK_HANDLERS, "hello_greeting", dataclasses.replace(greeting, run=counted))
    job_id = submit(engine, {"n": 250})
    engine.run_stage(take_job_message(engine))  # chunk 0..99: rows and messages
    for i in range(10):  # ten tasks run before the cancel (their host now caches the counters)
        engine.run_task(TaskMessage(job_id=job_id, task_id=make_task_id(job_id, 1, i)))
    continuation = take_job_message(engine)
    assert continuation.from_task == 100
    write_rows = engine.store.create_tasks

    def cancel_first(tasks):  # the operator's cancel lands just before this chunk writes its rows
        if not acked.is_set():
            code, body = api_jobs.cancel(engine, job_id)
            assert code == 200 and body["status"] == "cancelled"
            acked.set()
        return write_rows(tasks)

    monkeypatch.setattr(engine.store, "create_tasks", cancel_first)
    engine.run_stage(continuation)  # the chunk in flight: rows 100..199 and their messages
    QueueDriver(engine).run(job_id)
    late = sorted(i for i, after in starts if after)
    assert not late, f"{len(late)} handlers started after the cancel was acknowledged (tasks {late[:3]}...)"
    assert sorted(i for i, _ in starts) == list(range(10))
    rows = engine.store.list_tasks(job_id, 1, resolve=False)
    assert len(rows) == 200 and all(t.status == Status.COMPLETED for t in rows[:10])
    assert all(t.status == Status.CANCELLED and t.attempts == 0 for t in rows[10:])
    _, shards = engine.store.stage_rows(job_id)
    assert sum(s.started for s in shards) == 10
    assert engine.store.get_job(job_id).status == Status.CANCELLED and engine.store.get_stage(job_id, 2) is None


# ---------------------------------------------------------------- 5: retry repeated after a crash
def failed_job(engine: Engine) -> str:
    """A hello_world job whose stage 1 failed in every counter shard, its cause since gone away."""
    job_id = submit(engine, {"n": 20, "fail_indices": FAILING})
    QueueDriver(engine).run(job_id)
    assert engine.store.get_job(job_id).status == Status.FAILED
    assert len(engine.store.stage_rows(job_id)[1]) == 4
    for i in FAILING:  # the cause goes away (in real life: the missing input appears)
        t = engine.store.get_task(job_id, 1, i)
        engine.store.replace_task(t.model_copy(update={"parameters": {**t.parameters, "fail": False}}))
    return job_id


def assert_retried_exactly(engine: Engine, job_id: str) -> None:
    job = engine.store.get_job(job_id)
    assert job.status == Status.COMPLETED, (job.status, job.error_details)
    assert job.result_data == expected_hello(job_id, 20) and job.retries == 1
    tasks = engine.store.list_tasks(job_id, 1, resolve=False)
    assert [t.attempts for t in tasks] == [1] * 20  # the failed ones with a fresh attempt, the rest untouched


@pytest.mark.parametrize("point, skip", [("retry_marked", 0), ("retry_shard_reopened", 0),
                                         ("retry_shard_reopened", 2), ("retry_resumed", 0)])
def test_a_retry_repeated_after_a_crash_at_any_point_finishes_the_reopen(engine, point, skip):
    job_id = failed_job(engine)
    engine_faults.arm(point, "raise", skip=skip)
    with pytest.raises(engine_faults.InjectedFault):
        engine.retry(job_id)  # the process died part-way (the operator saw a 500)
    code, body = api_jobs.retry(engine, job_id)  # so the operator asks again
    assert code == 202 and body["status"] == "processing", body
    QueueDriver(engine, sweep=True).run(job_id)
    assert_retried_exactly(engine, job_id)
    with pytest.raises(ConflictError):
        engine.retry(job_id)


def test_the_sweeper_finishes_a_retry_that_crashed_part_way(engine):
    job_id = failed_job(engine)
    engine_faults.arm("retry_shard_reopened", "raise", skip=1)
    with pytest.raises(engine_faults.InjectedFault):
        engine.retry(job_id)  # nobody asks again
    assert engine.sweep() == {"finished_retry": 1}
    QueueDriver(engine, sweep=True).run(job_id)
    assert_retried_exactly(engine, job_id)


# ---------------------------------------------------------------- 9a: a redelivered continuation
def test_a_redelivered_fan_out_continuation_sends_only_to_tasks_still_untried(engine):
    job_id = submit(engine, {"n": 250})
    engine.run_stage(take_job_message(engine))
    continuation = take_job_message(engine)
    engine.repos.tasks_queue.client.clear_messages()
    engine_faults.arm("task_messages_sent", "raise")
    with pytest.raises(engine_faults.InjectedFault):  # rows and messages out, the cursor not moved
        engine.run_stage(continuation)
    for i in range(100, 105):  # five tasks of that chunk run meanwhile
        engine.run_task(TaskMessage(job_id=job_id, task_id=make_task_id(job_id, 1, i)))
    engine.repos.tasks_queue.client.clear_messages()
    engine.run_stage(continuation)  # the same continuation, delivered again
    sent = queued_task_ids(engine)
    assert sorted(sent) == [make_task_id(job_id, 1, i) for i in range(105, 200)], \
        f"{len(sent)} messages re-sent for a chunk with 95 untried tasks"
    assert engine.store.get_stage(job_id, 1).fanned_out == 200


# ---------------------------------------------------------------- 9c: counters after a retry
def test_counters_stay_consistent_after_a_retry(engine):
    job_id = failed_job(engine)
    code, _ = api_jobs.retry(engine, job_id)
    assert code == 202
    QueueDriver(engine).run(job_id)
    assert engine.store.get_job(job_id).status == Status.COMPLETED
    _, shards = engine.store.stage_rows(job_id)
    first = [s for s in shards if s.stage == 1]
    over = [(s.shard, s.started, s.total) for s in first if s.started > s.total]
    assert not over, f"shards whose started exceeds total (shard, started, total): {over}"
    assert sum(s.started for s in first) == 20 and sum(s.retried for s in first) == len(FAILING)
    _, status = api_jobs.status(engine, job_id)
    assert status["stages"][0]["attempts"] == 20 + len(FAILING)  # every claim counted once
    assert status["stages"][0]["tasks"]["completed"] == 20

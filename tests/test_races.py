"""Regression tests for issue 20's races (cases 6, 7, 8 and 9b), against real Azurite.

Lost replies come from the transport fault injector (repository_faults: the write is applied, its reply
dropped); another writer is a second engine over the same storage, acting around one store call; a host
whose clock runs ahead acts with the engine modules' clock shifted while it acts.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from functools import partial

import pytest

import engine_admin
import engine_recovery
import models
import repository_faults
import engine_jobs
import engine_tasks
from config import Settings
from support import (
    NoRetryClients, assert_completed_exactly, fanned_out, replace_handler, submit, take_job_message,
    take_task_message,
)
from support import make_engine as any_engine
from engine_counters import Change
from engine_group_commit import TaskWrite
from errors import ConflictError, TransientError
from models import Status, TaskMessage, make_task_id, utcnow
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine


@pytest.fixture
def faults():
    """A scripted transport fault injector (no random faults) for the clients built in this test."""
    injector = repository_faults.TransportFaults(repository_faults.FaultSpec(process_seed=20))
    previous = repository_faults.install(injector)
    yield injector
    repository_faults.install(previous)


make_engine = partial(any_engine, task_time_limit_s=20)  # no backoff, no sweeper grace, 20 s leases


def other_host(engine: Engine) -> Engine:
    """A second engine (another host) over the same storage."""
    return Engine(Repositories(engine.settings).ensure())


def claim_write(task) -> TaskWrite:
    return TaskWrite("claim", task.model_copy(update={"status": Status.PROCESSING, "attempts": task.attempts + 1}),
                     Change(task.shard, started=1))


def end_write(task) -> TaskWrite:
    return TaskWrite("end", task.model_copy(update={"status": Status.COMPLETED, "result": {"ok": task.index}}),
                     Change(task.shard, ended=Status.COMPLETED))


def one_transaction(engine: Engine, job_id: str, gate: TaskWrite, writes: list[TaskWrite], faults,
                    before_reread) -> list:
    """Commit ``writes`` in one group-commit transaction, in this order, and lose its reply; ``before_reread``
    runs just before the recognition re-read. ``gate`` is a lone write whose commit holds the leader until
    every write is queued (so they form the next batch). Returns each write's TaskWrite or exception."""
    job = engine.commits._job(job_id)
    real_commit, real_range = engine.store.commit_rows, engine.store.task_range
    state = {"commits": 0, "lost": False, "reread": False}

    def commit_rows(*args, **kwargs):
        state["commits"] += 1
        if state["commits"] == 1:  # the gate: wait for the others to queue, then lose the next $batch reply
            deadline = time.monotonic() + 10
            while len(job.writes) < len(writes) and time.monotonic() < deadline:
                time.sleep(0.01)
            out = real_commit(*args, **kwargs)
            faults.arm("lose", method="POST", match="$batch", service="table")
            return out
        try:
            return real_commit(*args, **kwargs)
        except TransientError:
            state["lost"] = True
            raise

    def task_range(*args, **kwargs):
        if state["lost"] and not state["reread"]:
            state["reread"] = True
            before_reread()
        return real_range(*args, **kwargs)

    engine.store.commit_rows, engine.store.task_range = commit_rows, task_range
    out: list = [None] * len(writes)

    def run(i: int, write: TaskWrite) -> None:
        try:
            out[i] = engine.commits.write(job_id, write)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[i] = exc

    try:
        threads = [threading.Thread(target=run, args=(-1, gate))]
        out.append(None)
        threads[0].start()
        while state["commits"] == 0:
            time.sleep(0.005)
        for i, write in enumerate(writes):  # queued one after another: the batch keeps this order
            threads.append(threading.Thread(target=run, args=(i, write)))
            threads[-1].start()
            while len(job.writes) < i + 1:
                time.sleep(0.005)
        for t in threads:
            t.join(30)
    finally:
        del engine.store.commit_rows, engine.store.task_range
    assert faults.counts()["lose"] == 1 and state["reread"], state
    assert isinstance(out[-1], TaskWrite), out[-1]
    return out[:-1]


# ---------------------------------------------------------------- 6. lost-reply recognition per row
def test_case6_landed_claims_are_recognised_when_another_host_took_the_first_row_over(azurite, faults):
    """Three claims share a transaction whose reply is lost; before the re-read, another host takes the first
    task over (its lease had run out). The other two claims landed and are still ours: they must run now."""
    engine = make_engine(azurite)
    job_id = fanned_out(engine, 4)
    tasks = engine.store.list_tasks(job_id, 1)
    other = other_host(engine)

    def take_over_the_first() -> None:
        current = other.store.get_task(job_id, 1, 0)
        other.store.replace_task(current.model_copy(update={"attempts": current.attempts + 1,
                                                            "lease_until": utcnow() + timedelta(seconds=20)}))

    results = one_transaction(engine, job_id, claim_write(tasks[3]), [claim_write(t) for t in tasks[:3]], faults,
                              take_over_the_first)
    assert isinstance(results[0], ConflictError), results[0]  # the first task is the other host's now
    for task, result in zip(tasks[1:3], results[1:], strict=True):
        assert isinstance(result, TaskWrite), f"task {task.index}: a landed claim reported as {result!r}"
        current = engine.store.get_task(job_id, 1, task.index)
        assert result.written.etag == current.etag and current.status == Status.PROCESSING
    _, shards = engine.store.stage_counters(job_id, 1)
    assert sum(s.started for s in shards.values()) == 4  # each claim counted once


def test_case6_landed_ends_advance_the_stage_once_when_another_writer_moved_the_first_row(azurite, faults):
    """The ends that finish a stage share a transaction whose reply is lost; another writer changes the first
    row before the re-read. Every end landed: none is a conflict, and exactly one advances the stage."""
    engine = make_engine(azurite)
    job_id = fanned_out(engine, 4)
    claimed = [engine.commits.write(job_id, claim_write(t)).written for t in engine.store.list_tasks(job_id, 1)]
    other = other_host(engine)

    def annotate_the_first() -> None:
        current = other.store.get_task(job_id, 1, 0)
        other.store.replace_task(current.model_copy(update={"last_error": "another writer was here"}))

    results = one_transaction(engine, job_id, end_write(claimed[3]), [end_write(t) for t in claimed[:3]], faults,
                              annotate_the_first)
    assert all(isinstance(r, TaskWrite) for r in results), results
    assert sum(r.finished is not None for r in results) == 1, "exactly one landed end advances the stage"
    stage = engine.store.get_stage(job_id, 1)
    assert stage.status == Status.COMPLETED and stage.completed == 4


# ---------------------------------------------------------------- 7. a lost progress reply, then a failed re-read
def test_case7_the_end_counts_after_a_lost_progress_reply_and_a_failed_reread(azurite, faults, monkeypatch):
    """The handler reports progress; that write lands but its reply is lost and the re-read that would recognise
    it fails. The worker is left on the old ETag; its finished work must still end the task, now."""
    engine = make_engine(azurite, NoRetryClients, progress_interval_s=0)
    calls = []

    def greet_with_progress(p, ctx):
        calls.append(ctx.task_id)
        if len(calls) == 1:
            faults.arm("lose", method="POST", match="$batch", service="table")  # the progress write
            faults.arm("refuse", method="GET", match=f"/{engine.settings.tasks_table}()", service="table")
            ctx.progress(50)
            assert faults.counts()["lose"] == 1 and faults.counts()["refuse"] == 1
        return greet.run(p, ctx)

    greet = replace_handler(monkeypatch, "hello_greeting", greet_with_progress)
    job_id = submit(engine, {"n": 1})
    engine.run_stage(take_job_message(engine))
    engine.run_task(take_task_message(engine))
    task = engine.store.get_task(job_id, 1, 0)
    assert task.status == Status.COMPLETED, f"the finished task is {task.status} (end thrown away as superseded)"
    assert task.attempts == 1 and len(calls) == 1
    _, shards = engine.store.stage_counters(job_id, 1)
    assert sum(s.progress for s in shards.values()) == 0  # the lost progress write's share was taken back out
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 1)
    assert len(calls) == 1


# ---------------------------------------------------------------- 8. clock skew between hosts
@contextmanager
def clock_ahead(seconds: float):
    """This process's engine clock shifted ahead while a host acts (another host, in-process)."""
    shifted = lambda: utcnow() + timedelta(seconds=seconds)  # noqa: E731
    with pytest.MonkeyPatch.context() as m:
        for module in (engine_tasks, engine_jobs, engine_recovery, engine_admin, models):
            m.setattr(module, "utcnow", shifted)
        yield


SKEW_S = 45  # within the 60 s bound


@pytest.mark.parametrize("action", ["redelivery", "cancel", "poison", "sweep"])
def test_case8_a_host_whose_clock_runs_ahead_never_takes_over_a_live_lease(azurite, monkeypatch, action):
    """Host A runs a task under a 20 s lease; host B, whose clock is 45 s ahead, meets the task meanwhile (a
    redelivered message, after a cancel, a poison message of its attempt, its sweeper). B must see the lease
    as live: the task is not run twice, cancelled, failed or re-sent while A runs it."""
    a = make_engine(azurite, max_clock_skew_s=60)
    b = other_host(a)
    seen = {}
    calls = []

    def greet_while_b_acts(p, ctx):
        calls.append(ctx.attempt)
        if len(calls) == 1:
            msg = TaskMessage(job_id=ctx.job_id, task_id=ctx.task_id)
            if action == "cancel":
                a.cancel(ctx.job_id)
            with clock_ahead(SKEW_S):
                if action in ("redelivery", "cancel"):
                    b.run_task(msg, dequeue_count=2)
                elif action == "poison":
                    b.on_task_poison(msg.model_copy(update={"attempt": 1}).encode())
                else:
                    seen["sweep"] = b.sweep()
            seen["row"] = a.store.get_task(ctx.job_id, 1, 0)
        return greet.run(p, ctx)

    greet = replace_handler(monkeypatch, "hello_greeting", greet_while_b_acts)
    job_id = submit(a, {"n": 1})
    a.run_stage(take_job_message(a))
    a.run_task(take_task_message(a))
    row = seen["row"]
    assert (row.status, row.attempts) == (Status.PROCESSING, 1), f"B took the live lease over: {row.status}, " \
                                                                  f"attempt {row.attempts}, {row.error_details}"
    assert calls == [1], f"the handler ran for attempts {calls}"
    assert "resent_stale_task" not in seen.get("sweep", {})
    ended = a.store.get_task(job_id, 1, 0)
    assert ended.status == Status.COMPLETED and ended.attempts == 1  # A's end counted


def test_case8_the_skew_bound_is_a_setting_of_60_s():
    assert Settings.model_fields["max_clock_skew_s"].default == 60
    assert Settings(MAX_CLOCK_SKEW_S="90").max_clock_skew_s == 90


# ---------------------------------------------------------------- 9b. poison moved by the Functions host
def test_case9b_a_host_moved_poison_message_does_not_fail_a_task_with_attempts_left(azurite, faults, monkeypatch):
    """The task's first attempt met a transient error: it is queued again with 4 of 5 attempts left. A poison
    message the Functions host moved (after its own maxDequeueCount, so it names no attempt) arrives: it cannot
    be about an attempt that gave up, so the task is not failed; it runs and the job completes."""
    engine = make_engine(azurite)
    calls = []

    def greet_once_transient(p, ctx):
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise TransientError("storage answered 503 (first attempt)")
        return greet.run(p, ctx)

    greet = replace_handler(monkeypatch, "hello_greeting", greet_once_transient)
    job_id = submit(engine, {"n": 1})
    engine.run_stage(take_job_message(engine))
    engine.run_task(take_task_message(engine))
    task = engine.store.get_task(job_id, 1, 0)
    assert (task.status, task.attempts) == (Status.QUEUED, 1)
    engine.on_task_poison(TaskMessage(job_id=job_id, task_id=make_task_id(job_id, 1, 0)).encode())
    task = engine.store.get_task(job_id, 1, 0)
    assert task.status == Status.QUEUED, f"a host-moved poison message failed a task with attempts left: " \
                                         f"{task.error_details}"
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 1)
    assert calls == [1, 2]


def test_case9b_a_host_moved_poison_message_still_ends_a_task_out_of_attempts(azurite, faults):
    """A task whose every attempt stopped its worker (processing, lease run out, attempts used up): the host's
    poison message ends it, as before."""
    engine = make_engine(azurite)
    job_id = submit(engine, {"n": 1})
    engine.run_stage(take_job_message(engine))
    task = engine.store.get_task(job_id, 1, 0)
    engine.store.replace_task(task.model_copy(update={
        "status": Status.PROCESSING, "attempts": engine.max_attempts, "lease_until": utcnow() - timedelta(hours=1),
        "started_at": utcnow() - timedelta(hours=1)}))
    engine.on_task_poison(TaskMessage(job_id=job_id, task_id=task.task_id).encode())
    task = engine.store.get_task(job_id, 1, 0)
    assert task.status == Status.FAILED and task.error_code == "timeout", (task.status, task.error_details)


def test_case9b_a_redriven_message_moved_again_at_the_same_attempt_ends_the_task(azurite, faults):
    """The re-drive is bounded: its message names the attempt it was sent at, so if the host moves it to poison
    too while the task is still at that attempt (its deliveries never reached the task), the task ends."""
    engine = make_engine(azurite)
    job_id = submit(engine, {"n": 1})
    engine.run_stage(take_job_message(engine))
    take_task_message(engine)
    task = engine.store.get_task(job_id, 1, 0)
    engine.store.replace_task(task.model_copy(update={"attempts": 1, "last_error": "storage answered 503"}))
    engine.on_task_poison(TaskMessage(job_id=job_id, task_id=task.task_id).encode())
    redriven = take_task_message(engine)
    assert redriven.attempt == 1 and engine.store.get_task(job_id, 1, 0).status == Status.QUEUED
    engine.on_task_poison(redriven.encode())
    task = engine.store.get_task(job_id, 1, 0)
    assert task.status == Status.FAILED and "gave up after 1 attempts" in task.error_details

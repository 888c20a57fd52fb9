"""Runs: one tasks-queue message naming several neighbouring short tasks, each still claimed, retried and
ended on its own; a redelivered run is split into single messages, a storage fault mid-run hands the rest
to single messages, at-least-once delivery of runs doubles nothing (real Azurite, the engine's own paths)."""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest

import api_jobs
import controller_factory
import engine_fanout
import engine_faults
import engine_tasks
from support import expected_hello, fresh_settings, submit
from engine_fanout import run_length, runs
from models import TaskMessage, TaskRecord, decode_task_message, make_task_id, parse_task_id
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine

N = 64  # hello_world tasks per stage: with RUN_MIN_MESSAGES at 16, run_length(4, 64) = 4: 16 runs a stage
RUN = 4


@pytest.fixture
def run_engine(azurite, monkeypatch) -> Engine:
    """hello_world's two task types sent in runs of up to 4 (a stage keeps 16 messages, not 64, to keep
    the tests small); short leases and no retry delay."""
    monkeypatch.setattr(engine_fanout, "RUN_MIN_MESSAGES", 16)
    for task_type in ("hello_greeting", "hello_reply"):
        handler = controller_factory.TASK_HANDLERS[task_type]
        monkeypatch.setitem(controller_factory.TASK_HANDLERS, task_type,
                            dataclasses.replace(handler, tasks_per_message=RUN))
    settings = fresh_settings(azurite.connection_string, task_time_limit_s=2, retry_base_delay_s=0)
    yield Engine(Repositories(settings).ensure())
    engine_faults.disarm()


def attempts(engine: Engine, job_id: str) -> dict[str, int]:
    return {t.task_id: t.attempts for stage in (1, 2) for t in engine.store.list_tasks(job_id, stage)}


def completed(engine: Engine, job_id: str) -> dict:
    code, status = api_jobs.status(engine, job_id)
    assert code == 200 and status["status"] == "completed", status
    return status


def test_run_length_and_runs_of_consecutive_tasks():
    assert engine_fanout.RUN_MIN_MESSAGES == 32
    assert run_length(8, 10) == 1 and run_length(8, 200) == 6 and run_length(8, 2000) == 8
    rows = [TaskRecord(job_id="j" * 64, task_id=f"t{i}", stage=1, index=i, shard=0, task_type="x", parameters={})
            for i in (0, 1, 2, 3, 4, 6, 7)]
    assert runs(rows, 3) == [["t0", "t1", "t2"], ["t3", "t4"], ["t6", "t7"]]  # a gap starts a new run


def test_a_stage_of_short_tasks_goes_out_in_runs_and_each_task_runs_once(run_engine):
    job_id = submit(run_engine, {"n": N})
    driver = QueueDriver(run_engine)
    driver.run(job_id)
    assert completed(run_engine, job_id)["result_data"] == expected_hello(job_id, N)
    assert driver.delivered["tasks"] == 2 * N // RUN  # one message per run of 4, not one per task
    assert set(attempts(run_engine, job_id).values()) == {1}


@pytest.mark.parametrize("seed", [3, 4])
def test_runs_delivered_twice_shuffled_double_nothing(run_engine, seed):
    job_id = submit(run_engine, {"n": N})
    QueueDriver(run_engine, copies=2, shuffle_seed=seed).run(job_id)
    status = completed(run_engine, job_id)
    assert status["result_data"] == expected_hello(job_id, N)
    assert status["tasks"]["completed"] == 2 * N
    assert set(attempts(run_engine, job_id).values()) == {1}


def test_a_transient_task_failure_in_a_run_is_retried_alone(run_engine):
    job_id = submit(run_engine, {"n": N, "transient_failures": 1})  # every stage-1 task fails its first attempt
    driver = QueueDriver(run_engine)
    driver.run(job_id)
    assert completed(run_engine, job_id)["result_data"] == expected_hello(job_id, N)
    # stage 1: 16 runs, then 64 retries each in its own message; stage 2: 16 runs
    assert driver.delivered["tasks"] == N // RUN + N + N // RUN
    tries = attempts(run_engine, job_id)
    assert {tries[make_task_id(job_id, 1, i)] for i in range(N)} == {2}
    assert {tries[make_task_id(job_id, 2, i)] for i in range(N)} == {1}


def test_a_storage_fault_mid_run_hands_the_rest_to_single_messages(run_engine):
    job_id = submit(run_engine, {"n": N})
    engine_faults.arm("task_claimed", "throttle", times=1, skip=1)  # the 2nd task claimed: storage 503
    driver = QueueDriver(run_engine)
    driver.run(job_id)
    assert completed(run_engine, job_id)["result_data"] == expected_hello(job_id, N)
    assert driver.errors == []  # the run's invocation handed off its rest and succeeded
    tries = attempts(run_engine, job_id)
    retried = [t for t, n in tries.items() if n != 1]
    assert len(retried) == 1 and tries[retried[0]] == 2
    # the fault hit the second task of the first run the driver ran (whichever run the queue gave first):
    # that task and the two after it went on as three single messages
    assert parse_task_id(retried[0])[2] % RUN == 1
    assert driver.delivered["tasks"] == 2 * N // RUN + 3


class _Died(BaseException):
    """The process stopping mid-run (not an error the engine could catch)."""


def test_a_run_whose_host_died_mid_way_is_split_when_redelivered(run_engine, monkeypatch, caplog):
    job_id = submit(run_engine, {"n": N})
    driver = QueueDriver(run_engine)
    driver._round("jobs", run_engine.repos.jobs_queue, driver._queues[0][2])  # stage 1 fanned out
    queue = run_engine.repos.tasks_queue.client
    (first,) = queue.receive_messages(max_messages=1, visibility_timeout=60)
    run = decode_task_message(first.content)
    assert run.count == RUN
    hits = []
    real = engine_faults.point

    def dies_after_the_second_handler(name: str) -> None:
        real(name)
        if name == "handler_returned":
            hits.append(name)
            if len(hits) == 2:
                raise _Died()

    monkeypatch.setattr(engine_faults, "point", dies_after_the_second_handler)
    with pytest.raises(_Died):
        run_engine.run_task(run, dequeue_count=first.dequeue_count)
    monkeypatch.setattr(engine_faults, "point", real)
    first_index = parse_task_id(run.task_id)[2]  # fan-out sends from several threads: any run may come first
    states = {t.index: t.status for t in run_engine.store.task_range(job_id, 1, first_index, first_index + RUN - 1)}
    assert [str(states[first_index + i]) for i in range(RUN)] == ["completed", "processing", "queued", "queued"]
    queue.update_message(first, visibility_timeout=0)  # the lease runs out: delivered again, dequeue_count 2
    with caplog.at_level(logging.INFO, logger="engine_tasks"):
        driver.run(job_id)
    splits = [json.loads(r.getMessage()) for r in caplog.records if '"task_run_split"' in r.getMessage()]
    assert [(s["task_id"], s["count"], s["dequeue_count"]) for s in splits] == [(run.task_id, RUN, 2)]
    assert completed(run_engine, job_id)["result_data"] == expected_hello(job_id, N)
    tries = attempts(run_engine, job_id)
    assert tries[make_task_id(job_id, 1, first_index)] == 1  # done before the death: its message was ignored
    assert tries[make_task_id(job_id, 1, first_index + 1)] == 2  # its lease ran out: taken over, once
    assert [t for t, n in tries.items() if n != 1] == [make_task_id(job_id, 1, first_index + 1)]


def test_a_poisoned_run_gives_each_task_its_own_message(run_engine):
    job_id = submit(run_engine, {"n": N})
    driver = QueueDriver(run_engine)
    driver._round("jobs", run_engine.repos.jobs_queue, driver._queues[0][2])
    queue = run_engine.repos.tasks_queue.client
    (first,) = queue.receive_messages(max_messages=1, visibility_timeout=60)
    queue.delete_message(first)
    run = decode_task_message(first.content)
    run_engine.on_task_poison(run.encode())  # a run the host gave up on, not a task
    first_index = parse_task_id(run.task_id)[2]
    states = {t.index: str(t.status) for t in run_engine.store.task_range(job_id, 1, first_index,
                                                                           first_index + RUN - 1)}
    assert set(states.values()) == {"queued"}  # nothing failed
    driver.run(job_id)
    assert completed(run_engine, job_id)["result_data"] == expected_hello(job_id, N)
    assert set(attempts(run_engine, job_id).values()) == {1}


def test_a_task_taken_by_another_message_after_the_run_read_its_row_runs_once(run_engine, monkeypatch, caplog):
    """The run claims with the ETag of the row it read first: a task claimed and ended meanwhile (here by its
    own single message, as after a split) is not claimed again."""
    job_id = submit(run_engine, {"n": N})
    driver = QueueDriver(run_engine)
    driver._round("jobs", run_engine.repos.jobs_queue, driver._queues[0][2])
    queue = run_engine.repos.tasks_queue.client
    (first,) = queue.receive_messages(max_messages=1, visibility_timeout=60)
    run = decode_task_message(first.content)
    taken = run.singles()[2]
    real = run_engine.store.task_range

    def read_then_lose_the_race(*args):
        monkeypatch.setattr(run_engine.store, "task_range", real)  # once: group commit reads with it too
        rows = real(*args)  # what the run will claim with
        run_engine.run_task(taken)  # meanwhile another message runs task 2 of the run to its end
        return rows

    monkeypatch.setattr(run_engine.store, "task_range", read_then_lose_the_race)
    with caplog.at_level(logging.INFO, logger="engine_tasks"):
        run_engine.run_task(run, dequeue_count=first.dequeue_count)
    lost = [json.loads(r.getMessage()) for r in caplog.records if '"task_claimed_elsewhere"' in r.getMessage()]
    assert [e["task_id"] for e in lost] == [taken.task_id]  # the run's claim from its stale row failed
    queue.delete_message(first)
    driver.run(job_id)
    assert completed(run_engine, job_id)["result_data"] == expected_hello(job_id, N)
    assert set(attempts(run_engine, job_id).values()) == {1}  # task 2 too: the run's stale claim failed


def test_a_run_starts_no_task_after_its_budget(run_engine, monkeypatch):
    monkeypatch.setattr(engine_tasks, "RUN_BUDGET_S", 0)  # every run hands on all but its first task
    job_id = submit(run_engine, {"n": N})
    driver = QueueDriver(run_engine)
    driver.run(job_id)
    assert completed(run_engine, job_id)["result_data"] == expected_hello(job_id, N)
    assert set(attempts(run_engine, job_id).values()) == {1}
    assert driver.delivered["tasks"] == 2 * N // RUN + 2 * N // RUN * (RUN - 1)  # each run, then 3 singles


def test_a_message_names_one_task_unless_it_is_a_run():
    single = TaskMessage(job_id="a" * 64, task_id=make_task_id("a" * 64, 2, 7))
    assert "count" not in json.loads(single.encode()) and single.singles() == [single]
    run = TaskMessage(job_id="a" * 64, task_id=make_task_id("a" * 64, 2, 7), count=3, traceparent="00-x")
    assert [m.task_id for m in run.singles()] == [make_task_id("a" * 64, 2, i) for i in (7, 8, 9)]
    assert {m.traceparent for m in run.singles()} == {"00-x"}

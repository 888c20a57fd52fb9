"""At-least-once done right, in-process against real Azurite: retries, poison, leases, sweeper,
retry and cancel, and a crash at every named engine point."""
from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

import engine_faults
import api_jobs
from base_controller import JobController, TaskHandler
from support import expected_hello, fresh_settings, submit, take_job_message
from controller_factory import JOB_TYPES, TASK_HANDLERS
from controller_hello_world import HELLO_WORLD
from errors import ConflictError, NotFoundError
from models import StageMessage, Status, TaskMessage, decode_job_message, make_task_id, utcnow
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine

MAX = 5  # host.json maxDequeueCount


@pytest.fixture
def engine(azurite):
    settings = fresh_settings(azurite.connection_string, retry_base_delay_s=0, sweeper_grace_s=0,
                              task_time_limit_s=2)
    yield Engine(Repositories(settings).ensure())
    engine_faults.disarm()


def advances(driver: QueueDriver) -> list[tuple]:
    """(kind, stage) of every distinct jobs-queue message: one per stage and one completion if exact."""
    return sorted((m.kind, getattr(m, "stage", 0)) for m in map(decode_job_message, driver.job_bodies))


# ---------------------------------------------------------------- error classes and poison
def test_transient_errors_are_retried_then_succeed(engine):
    job_id = submit(engine, {"n": 3, "transient_failures": 2})
    QueueDriver(engine).run(job_id)
    _, status = api_jobs.status(engine, job_id)
    assert status["status"] == "completed" and status["result_data"] == expected_hello(job_id, 3)
    assert status["stages"][0]["attempts"] == 9 and status["stages"][1]["attempts"] == 3
    for task in engine.store.list_tasks(job_id, 1):
        assert task.attempts == 3 and "simulated transient error on attempt 2" in task.last_error


def test_always_transient_gives_up_after_max_attempts_via_poison(engine):
    job_id = submit(engine, {"n": 2, "transient_failures": 100})
    driver = QueueDriver(engine)
    driver.run(job_id)
    assert driver.delivered.get("tasks-poison") == 2
    _, status = api_jobs.status(engine, job_id)
    assert status["status"] == "failed"
    for task in engine.store.list_tasks(job_id, 1):
        assert task.status == Status.FAILED and task.attempts == MAX
        assert task.error_details == (f"gave up after {MAX} attempts: simulated transient error on attempt {MAX} "
                                      "(transient_failures)")
    assert "gave up after 5 attempts" in status["error_details"]
    assert status["stages"][1]["tasks"]["total"] == 0  # later stages never ran


def test_permanent_error_fails_after_one_attempt(engine):
    job_id = submit(engine, {"n": 3, "fail_indices": [0]})
    QueueDriver(engine).run(job_id)
    task = engine.store.get_task(job_id, 1, 0)
    assert task.status == Status.FAILED and task.attempts == 1 and "asked to fail" in task.error_details
    assert engine.store.get_job(job_id).status == Status.FAILED


def test_backoff_grows_per_attempt_and_is_capped(azurite):
    eng = Engine(Repositories(fresh_settings(azurite.connection_string, retry_base_delay_s=2,
                                             retry_max_delay_s=30)))
    for attempt, nominal in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (9, 30)]:
        delays = {eng.retry_delay_s(attempt) for _ in range(50)}
        assert all(0.8 * nominal - 1 <= d <= 1.2 * nominal + 1 for d in delays), (attempt, delays)


def test_handler_crash_is_a_readable_failure_not_a_retry_loop(engine, monkeypatch):
    def boom(p, ctx):
        raise ZeroDivisionError("division by zero in the handler")
    reply = TASK_HANDLERS["hello_reply"]
    monkeypatch.setitem(TASK_HANDLERS, "hello_reply", TaskHandler("hello_reply", reply.parameters_model, boom))
    job_id = submit(engine, {"n": 2})
    QueueDriver(engine).run(job_id)
    task = engine.store.get_task(job_id, 2, 1)
    assert task.attempts == 1 and task.error_details == "ZeroDivisionError: division by zero in the handler"


# ---------------------------------------------------------------- redelivery and leases
def test_redelivered_finished_task_is_acknowledged_and_ignored(engine):
    job_id = submit(engine, {"n": 2})
    QueueDriver(engine).run(job_id)
    before = engine.store.get_task(job_id, 1, 0)
    engine.run_task(TaskMessage(job_id=job_id, task_id=before.task_id), dequeue_count=7)
    after = engine.store.get_task(job_id, 1, 0)
    assert after.model_dump() == before.model_dump() and after.etag == before.etag
    assert engine.store.get_job(job_id).status == Status.COMPLETED


def test_message_for_a_task_with_a_live_lease_is_deferred_not_run_twice(engine):
    job_id = submit(engine, {"n": 1})
    engine.run_stage(StageMessage(job_id=job_id, stage=1))
    engine.repos.tasks_queue.client.clear_messages()
    task = engine.store.get_task(job_id, 1, 0)
    engine.store.replace_task(task.model_copy(update={
        "status": Status.PROCESSING, "attempts": 1, "lease_until": utcnow() + timedelta(seconds=60)}))
    engine.run_task(TaskMessage(job_id=job_id, task_id=task.task_id), dequeue_count=2)
    again = engine.store.get_task(job_id, 1, 0)
    assert again.status == Status.PROCESSING and again.attempts == 1
    props = engine.repos.tasks_queue.client.get_queue_properties()
    assert props.approximate_message_count == 1  # re-sent, invisible until the lease ends
    assert list(engine.repos.tasks_queue.client.receive_messages()) == []


def test_late_finisher_of_an_expired_lease_is_superseded(engine):
    """Worker A overruns its lease; B reclaims and finishes; A's late end changes nothing."""
    job_id = submit(engine, {"n": 1})
    engine.run_stage(StageMessage(job_id=job_id, stage=1))
    engine.repos.tasks_queue.client.clear_messages()
    task = engine.store.get_task(job_id, 1, 0)
    a = engine.store.replace_task(task.model_copy(update={
        "status": Status.PROCESSING, "attempts": 1, "lease_until": utcnow() - timedelta(seconds=1)}))
    engine.run_task(TaskMessage(job_id=job_id, task_id=task.task_id))  # B: reclaims, runs, ends
    b_end = engine.store.get_task(job_id, 1, 0)
    assert b_end.status == Status.COMPLETED and b_end.attempts == 2
    engine.end_task(a, Status.FAILED, None, "A's late error")  # A
    final = engine.store.get_task(job_id, 1, 0)
    assert final.status == Status.COMPLETED and final.end_token == b_end.end_token
    stage = engine.store.get_stage(job_id, 1)
    assert (stage.completed, stage.failed, stage.status) == (1, 0, Status.COMPLETED)


# ---------------------------------------------------------------- crashes at every engine point
@pytest.mark.chaos
@pytest.mark.parametrize("point", engine_faults.POINTS)
def test_crash_at_every_engine_point_still_completes_exactly(engine, point):
    engine_faults.arm(point, "raise", times=1)
    params = {"n": 50, "message": point}
    try:
        job_id = submit(engine, params)
    except engine_faults.InjectedFault:  # submit died after writing the row: the client saw an error
        job_id = api_jobs.submit(engine, "hello_world", json.dumps(params).encode(), "http://t")[1]["job_id"]
    driver = QueueDriver(engine, sweep=True)
    driver.run(job_id, timeout=180)
    job = engine.store.get_job(job_id)
    assert job.status == Status.COMPLETED, (job.status, job.error_details)
    assert job.result_data == expected_hello(job_id, 50, point)
    assert advances(driver) == [("complete", 0), ("stage", 1), ("stage", 2)]
    assert engine_faults._armed.get(point) is None  # the fault really fired
    for stage in (1, 2):
        assert len(engine.store.list_tasks(job_id, stage, resolve=False)) == 50


def test_storage_throttling_is_retried_and_the_job_completes(engine):
    engine_faults.arm("task_claimed", "throttle", times=12)  # the first 12 claims meet a 503
    job_id = submit(engine, {"n": 20})
    driver = QueueDriver(engine, sweep=True)
    driver.run(job_id, timeout=180)
    assert sum("503" in e for e in driver.errors) == 12
    assert sum(t.attempts for t in engine.store.list_tasks(job_id, 1)) == 20 + 12
    assert engine.store.get_job(job_id).result_data == expected_hello(job_id, 20)


# ---------------------------------------------------------------- the sweeper
def test_sweeper_sends_the_lost_first_message(engine):
    engine_faults.arm("job_row_written", "raise")
    with pytest.raises(engine_faults.InjectedFault):
        submit(engine, {"n": 4})
    job_id = engine.store.active_jobs()[0].job_id
    assert engine.sweep() == {"resent_first_stage": 1}
    QueueDriver(engine).run(job_id)
    assert engine.store.get_job(job_id).result_data == expected_hello(job_id, 4)


def test_sweeper_rescues_a_task_whose_worker_died_and_whose_message_is_gone(engine):
    job_id = submit(engine, {"n": 3})
    engine.run_stage(take_job_message(engine))
    engine.repos.tasks_queue.client.clear_messages()  # every task message lost
    for i in range(3):
        t = engine.store.get_task(job_id, 1, i)
        engine.store.replace_task(t.model_copy(update={
            "status": Status.PROCESSING, "attempts": 1, "time_limit_s": 2,
            "lease_until": utcnow() - timedelta(seconds=5)}))
    assert engine.sweep() == {"resent_stale_task": 3}
    QueueDriver(engine, sweep=True).run(job_id)
    assert engine.store.get_job(job_id).result_data == expected_hello(job_id, 3)
    assert all(t.attempts == 2 for t in engine.store.list_tasks(job_id, 1))


def test_concurrent_sweepers_and_traffic_keep_one_advance_per_stage(engine):
    engine_faults.arm("stage_decided", "raise", times=1)
    job_id = submit(engine, {"n": 30})
    driver = QueueDriver(engine)
    with pytest.raises(AssertionError, match="queues drained"):
        driver.run(job_id)  # the advance of stage 1 was lost
    threads = [threading.Thread(target=engine.sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    driver.run(job_id)
    assert engine.store.get_job(job_id).result_data == expected_hello(job_id, 30)
    stages, _ = engine.store.stage_rows(job_id)
    assert [s.stage for s in stages] == [1, 2] and len(engine.store.list_tasks(job_id, 2)) == 30


# ---------------------------------------------------------------- failure policy
def test_tolerated_failures_complete_the_job_and_list_the_failed_tasks(engine, monkeypatch):
    tolerant = JobController("hello_tolerant", "hello_world that tolerates half its tasks failing",
                             HELLO_WORLD.parameters_model, HELLO_WORLD.stages[:1], HELLO_WORLD.aggregate,
                             tolerated_failure_fraction=0.5)
    monkeypatch.setitem(JOB_TYPES, tolerant.job_type, tolerant)
    ok = api_jobs.submit(engine, "hello_tolerant", b'{"n": 4, "fail_indices": [2]}', "http://t")[1]["job_id"]
    too_many = api_jobs.submit(engine, "hello_tolerant", b'{"n": 4, "fail_indices": [0, 1, 2]}',
                              "http://t")[1]["job_id"]
    QueueDriver(engine).run()
    done = engine.store.get_job(ok)
    assert done.status == Status.COMPLETED
    assert done.result_data["failed_tasks"] == [{"task_id": make_task_id(ok, 1, 2),
                                                 "error": f"task {make_task_id(ok, 1, 2)} was asked to fail "
                                                          "(fail_indices)"}]
    assert len(done.result_data["greetings"]) == 3
    assert engine.store.get_job(too_many).status == Status.FAILED


# ---------------------------------------------------------------- retry and cancel
def test_retry_reruns_only_the_failed_tasks_and_resumes(engine):
    job_id = submit(engine, {"n": 6, "fail_indices": [1, 4]})
    QueueDriver(engine).run(job_id)
    assert engine.store.get_job(job_id).status == Status.FAILED
    code, again = api_jobs.submit(engine, "hello_world", b'{"n": 6, "fail_indices": [1, 4]}', "http://t")
    assert code == 200 and again["status"] == "failed" and "/retry" in again["hint"]
    done_before = {t.task_id: t.end_token for t in engine.store.list_tasks(job_id, 1, Status.COMPLETED)}
    for i in (1, 4):  # the cause goes away (in real life: the missing input appears)
        t = engine.store.get_task(job_id, 1, i)
        engine.store.replace_task(t.model_copy(update={"parameters": {**t.parameters, "fail": False}}))
    code, body = api_jobs.retry(engine, job_id)
    assert code == 202 and body["status"] == "processing" and body["retries"] == 1
    QueueDriver(engine).run(job_id)
    job = engine.store.get_job(job_id)
    assert job.status == Status.COMPLETED and job.result_data == expected_hello(job_id, 6)
    after = {t.task_id: t.end_token for t in engine.store.list_tasks(job_id, 1)}
    assert all(after[k] == v for k, v in done_before.items())  # completed tasks were not re-run
    assert engine.store.get_task(job_id, 1, 1).attempts == 1  # fresh attempt count
    with pytest.raises(ConflictError):
        engine.retry(job_id)


def test_cancel_stops_queued_tasks_and_running_ones_advance_nothing(engine):
    job_id = submit(engine, {"n": 10})
    engine.run_stage(take_job_message(engine))
    running = engine.store.get_task(job_id, 1, 0)
    running = engine.store.replace_task(running.model_copy(update={
        "status": Status.PROCESSING, "attempts": 1, "lease_until": utcnow() + timedelta(seconds=30)}))
    code, body = api_jobs.cancel(engine, job_id)
    assert code == 200 and body["status"] == "cancelled" and body["tasks"]["cancelled"] == 9
    engine.end_task(running, Status.COMPLETED, {"greeting": "late"}, None)  # the running one finishes
    driver = QueueDriver(engine)
    driver.run(job_id)
    assert engine.store.get_job(job_id).status == Status.CANCELLED
    assert engine.store.get_stage(job_id, 2) is None
    assert all(t.attempts == 0 for t in engine.store.list_tasks(job_id, 1)[1:])  # never started
    with pytest.raises(ConflictError):
        engine.cancel(job_id)
    with pytest.raises(NotFoundError):
        engine.cancel("0" * 64)

"""The engine against real Azurite, messages delivered in-process through the app's queue functions."""
from __future__ import annotations

import threading

import pytest

import api_jobs
import repositories
from errors import ConflictError
from models import (
    CompletionMessage, JobRecord, StageMessage, Status, TaskRecord, decode_job_message, make_task_id, utcnow,
)
from queue_driver import QueueDriver
from engine_counters import shard_count
from support import expected_hello, submit


def job_messages(driver: QueueDriver) -> list:
    return [decode_job_message(b) for b in driver.job_bodies]


def test_hello_world_completes_with_exact_results_and_lineage(engine):
    job_id = submit(engine, {"n": 5, "message": "hey"})
    driver = QueueDriver(engine)
    driver.run()
    code, status = api_jobs.status(engine, job_id)
    assert code == 200 and status["status"] == "completed"
    assert status["result_data"] == expected_hello(job_id, 5, "hey")
    assert status["tasks"] == {"total": 10, "queued": 0, "processing": 0, "completed": 10, "failed": 0,
                              "cancelled": 0}
    assert [s["status"] for s in status["stages"]] == ["completed", "completed"]
    kinds = [(m.kind, getattr(m, "stage", None)) for m in job_messages(driver)]
    assert kinds == [("stage", 1), ("stage", 2), ("complete", None)]


@pytest.mark.parametrize("seed", [1, 2])
def test_every_message_delivered_twice_shuffled_gives_identical_results(engine, seed):
    job_id = submit(engine, {"n": 30})
    driver = QueueDriver(engine, copies=2, shuffle_seed=seed)
    driver.run()
    _, status = api_jobs.status(engine, job_id)
    assert status["status"] == "completed"
    assert status["result_data"] == expected_hello(job_id, 30)
    kinds = sorted((m.kind, getattr(m, "stage", 0) or 0) for m in job_messages(driver))
    assert kinds == [("complete", 0), ("stage", 1), ("stage", 2)]  # one advance per stage
    assert driver.delivered["tasks"] == 2 * 60
    for stage in (1, 2):
        assert len(engine.store.list_tasks(job_id, stage)) == 30


def test_failed_tasks_fail_the_job_and_later_stages_never_run(engine):
    job_id = submit(engine, {"n": 5, "fail_indices": [1, 3]})
    QueueDriver(engine).run()
    _, status = api_jobs.status(engine, job_id)
    assert status["status"] == "failed" and "result_data" not in status
    for i in (1, 3):
        assert make_task_id(job_id, 1, i) in status["error_details"]
    assert "2 of 5 tasks failed" in status["error_details"]
    assert status["stages"][0]["tasks"]["failed"] == 2 and status["stages"][0]["tasks"]["completed"] == 3
    assert status["stages"][1]["status"] == "queued" and status["stages"][1]["tasks"]["total"] == 0
    failed = engine.store.list_tasks(job_id, 1, status=Status.FAILED)
    assert all("asked to fail" in t.error_details for t in failed)


def test_same_stage_message_twice_writes_no_duplicate_rows_or_messages(engine, repos):
    job_id = submit(engine, {"n": 150})
    (msg,) = list(repos.jobs_queue.client.receive_messages())
    repos.jobs_queue.client.delete_message(msg)
    stage_msg = decode_job_message(msg.content)
    engine.run_stage(stage_msg)
    engine.run_stage(stage_msg)
    props = repos.tasks_queue.client.get_queue_properties()
    assert props.approximate_message_count == 150
    assert len(engine.store.list_tasks(job_id, 1)) == 150
    stages, shards = engine.store.stage_rows(job_id)
    assert len(stages) == 1 and stages[0].dispatched and len(shards) == shard_count(150, engine.shards_per_stage) == 12


def test_crash_after_partial_stage_write_is_completed_by_redelivery(engine, repos, monkeypatch):
    job_id = submit(engine, {"n": 120})
    (msg,) = list(repos.jobs_queue.client.receive_messages())
    repos.jobs_queue.client.delete_message(msg)
    stage_msg = decode_job_message(msg.content)
    real = repositories.submit_transaction
    calls = {"n": 0}

    def flaky(table, ops):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("process died between batches")
        return real(table, ops)

    monkeypatch.setattr(repositories, "submit_transaction", flaky)
    with pytest.raises(RuntimeError):
        engine.run_stage(stage_msg)
    stage = engine.store.get_stage(job_id, 1)  # counters first; the chunk's cursor has not moved
    assert stage.fanned_out == 0 and not stage.dispatched
    monkeypatch.setattr(repositories, "submit_transaction", real)
    engine.run_stage(stage_msg)
    assert len(engine.store.list_tasks(job_id, 1)) == 120
    QueueDriver(engine).run()
    assert engine.store.get_job(job_id).result_data == expected_hello(job_id, 120)


def test_lost_reply_of_the_last_commit_still_advances_once(engine, repos, monkeypatch):
    """The transaction lands but its reply is lost: the writer finds its own token and advances."""
    job_id = submit(engine, {"n": 4})
    real = engine.store.commit_rows

    def commit_then_lose_reply(tasks, shards, stage):
        etags = real(tasks, shards, stage)
        if stage is not None:  # the commit that ends a stage lands, and its reply is lost
            raise ConflictError("reply lost after commit")
        return etags

    monkeypatch.setattr(engine.store, "commit_rows", commit_then_lose_reply)
    driver = QueueDriver(engine)
    driver.run()
    assert engine.store.get_job(job_id).result_data == expected_hello(job_id, 4)
    kinds = [(m.kind, getattr(m, "stage", None)) for m in job_messages(driver)]
    assert kinds == [("stage", 1), ("stage", 2), ("complete", None)]


def test_tasks_ending_at_the_same_moment_advance_exactly_once(engine, repos):
    """32 threads end 32 tasks together, many times over: exactly one of them advances each stage."""
    for round_ in range(3):
        job_id = submit(engine, {"n": 32, "message": f"round {round_}"})
        (msg,) = list(repos.jobs_queue.client.receive_messages())
        repos.jobs_queue.client.delete_message(msg)
        engine.run_stage(decode_job_message(msg.content))
        tasks = engine.store.list_tasks(job_id, 1)
        claimed = [engine.store.replace_task(t.model_copy(update={"status": Status.PROCESSING}))
                   for t in tasks]
        barrier = threading.Barrier(len(claimed))
        errors = []

        def finish(task: TaskRecord) -> None:
            try:
                barrier.wait()
                engine.end_task(task, Status.COMPLETED, {"greeting": "x"}, None)
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=finish, args=(t,)) for t in claimed]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        advances = [decode_job_message(m.content) for m in repos.jobs_queue.client.receive_messages(
            max_messages=32, messages_per_page=32)]
        assert advances == [StageMessage(job_id=job_id, stage=2)]
        for m in repos.jobs_queue.client.peek_messages(max_messages=32):
            pytest.fail(f"unexpected extra message {m.content}")
        stage = engine.store.get_stage(job_id, 1)
        assert stage.status == Status.COMPLETED and stage.completed == 32 and stage.shards_remaining == 0
        repos.tasks_queue.client.clear_messages()
        for m in repos.jobs_queue.client.receive_messages(max_messages=32, messages_per_page=32):
            repos.jobs_queue.client.delete_message(m)


def test_large_parameters_and_results_spill_to_blobs_and_read_back(engine):
    store = engine.store
    job_id = "e" * 64
    big = {"text": "é" * 40_000, "items": list(range(5000))}  # well over 64 KiB in UTF-16
    job = store.create_job(JobRecord(job_id=job_id, job_type="hello_world", total_stages=2, parameters=big))
    entity = store.jobs.get_entity(job_id, "job")
    assert "parameters" not in entity and "parameters_ref" in entity
    assert store.get_job(job_id).parameters == big
    store.replace_job(job.model_copy(update={"status": Status.PROCESSING}))
    done = store.get_job(job_id).model_copy(update={"status": Status.COMPLETED, "result_data": [big, big],
                                                    "updated_at": utcnow()})
    store.replace_job(done)
    code, status = api_jobs.status(engine, job_id)
    assert code == 200 and status["result_data"] == [big, big] and status["parameters"] == big


def test_completion_message_before_the_last_stage_ends_is_ignored(engine, repos):
    job_id = submit(engine, {"n": 2})
    engine.complete(CompletionMessage(job_id=job_id))
    assert engine.store.get_job(job_id).status == Status.QUEUED
    engine.run_stage(StageMessage(job_id=job_id, stage=2))  # stage 1 has not ended: ignored
    assert engine.store.get_stage(job_id, 2) is None

"""Fan-out in bounded chunks: resumable by any instance, never doubled, paused while the queue is full."""
from __future__ import annotations


import pytest

from support import fresh_settings, submit
from models import StageMessage, decode_job_message, decode_task_message
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine


@pytest.fixture
def chunky(azurite) -> Engine:
    """An engine fanning out 100 tasks per invocation."""
    return Engine(Repositories(fresh_settings(azurite.connection_string, fanout_chunk=100)).ensure())


def take_job_messages(engine: Engine) -> list:
    client = engine.repos.jobs_queue.client
    out = []
    for m in client.receive_messages(max_messages=32, messages_per_page=32):
        out.append(decode_job_message(m.content))
        client.delete_message(m)
    return out


def task_ids(engine: Engine) -> list[str]:
    client = engine.repos.tasks_queue.client
    ids = []
    while batch := list(client.receive_messages(max_messages=32, messages_per_page=32, visibility_timeout=300)):
        ids += [decode_task_message(m.content).task_id for m in batch]
    return ids


def test_a_stage_fans_out_chunk_by_chunk_through_continuations(chunky):
    job_id = submit(chunky, {"n": 350})
    chain = take_job_messages(chunky)
    invocations = 0
    while chain:
        (msg,) = chain
        chunky.run_stage(msg)
        invocations += 1
        chain = [m for m in take_job_messages(chunky) if m.kind == "stage" and m.stage == 1]
    assert invocations == 4  # 100 + 100 + 100 + 50
    stage = chunky.store.get_stage(job_id, 1)
    assert stage.dispatched and stage.fanned_out == stage.total == 350
    ids = task_ids(chunky)
    assert len(ids) == len(set(ids)) == 350  # every task once, none twice
    assert len(chunky.store.list_tasks(job_id, 1)) == 350


def test_a_duplicate_or_late_continuation_does_nothing(chunky):
    job_id = submit(chunky, {"n": 250})
    (first,) = take_job_messages(chunky)
    chunky.run_stage(first)
    (continuation,) = take_job_messages(chunky)
    assert continuation.from_task == 100
    chunky.run_stage(continuation)
    chunky.run_stage(continuation)  # delivered again after the cursor moved: ignored
    assert len(task_ids(chunky)) == 200
    (next_one,) = take_job_messages(chunky)  # one continuation, not two
    assert next_one.from_task == 200
    chunky.run_stage(first)  # the first message, late (or the sweeper's re-send): it carries on from the cursor
    chunky.run_stage(next_one)  # the continuation it overtook finds the cursor moved: nothing
    ids = task_ids(chunky)
    assert len(ids) == len(set(ids)) == 50
    assert chunky.store.get_stage(job_id, 1).fanned_out == 250 and not take_job_messages(chunky)


def test_an_interrupted_chunk_is_redone_without_duplicate_rows(chunky, monkeypatch):
    job_id = submit(chunky, {"n": 150})
    (first,) = take_job_messages(chunky)
    real = chunky.store.replace_stage

    def die(stage):
        raise RuntimeError("process died after the chunk's rows and messages, before the cursor moved")

    monkeypatch.setattr(chunky.store, "replace_stage", die)
    with pytest.raises(RuntimeError):
        chunky.run_stage(first)
    monkeypatch.setattr(chunky.store, "replace_stage", real)
    chunky.run_stage(first)  # the redelivered message redoes chunk 0 (its row batches exist: skipped)
    (continuation,) = take_job_messages(chunky)
    chunky.run_stage(continuation)
    assert len(chunky.store.list_tasks(job_id, 1)) == 150
    ids = task_ids(chunky)
    assert len(set(ids)) == 150 and len(ids) == 250  # chunk 0's messages twice: harmless, the task runs once
    assert chunky.store.get_stage(job_id, 1).dispatched


def test_the_chain_pauses_while_the_tasks_queue_is_full(azurite):
    engine = Engine(Repositories(fresh_settings(azurite.connection_string, fanout_chunk=100,
                                                fanout_max_backlog=50, fanout_pause_s=1)).ensure())
    job_id = submit(engine, {"n": 150})
    (first,) = take_job_messages(engine)
    engine.run_stage(first)  # the first chunk always goes: 100 messages now wait in the tasks queue
    (continuation,) = take_job_messages(engine)
    engine.run_stage(continuation)
    stage = engine.store.get_stage(job_id, 1)
    assert stage.fanned_out == 100 and not stage.dispatched  # paused: nothing written, nothing sent
    assert engine.repos.tasks_queue.depth() == 100
    import time
    time.sleep(1.5)
    (again,) = [decode_job_message(m.content) for m in engine.repos.jobs_queue.client.peek_messages(max_messages=32)]
    assert again == StageMessage(job_id=job_id, stage=1, from_task=100)  # the same continuation, delayed
    QueueDriver(engine).run(job_id)  # consuming the queue lets the chain go on: the job completes
    assert engine.store.get_job(job_id).status == "completed"

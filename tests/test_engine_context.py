"""Issue 21: the engine's parts take a frozen context; the task I/O gets its results reader when it is built;
advancing a stage writes nothing to the stage row (``advance_sent`` was written every time and never read)."""
from __future__ import annotations

import dataclasses

import pytest
from azure.data.tables import UpdateMode

from controller_geo_common import STAC_EXTENTS
from engine_task_io import StorageTaskIO
from models import StageMessage, Status, decode_job_message
from repository_entities import stage_row_key
from queue_driver import QueueDriver


def test_advancing_a_stage_sends_its_message_and_writes_nothing_to_the_stage_row(engine):
    submitted = engine.submit("hello_world", {"n": 2})
    job_id = submitted.job.job_id
    engine.repos.jobs_queue.client.clear_messages()  # the submit's stage-1 message: this test runs the stage itself
    engine.run_stage(StageMessage(job_id=job_id, stage=1))
    stage = engine.store.get_stage(job_id, 1)
    engine.advance(stage)
    assert engine.store.get_stage(job_id, 1).etag == stage.etag  # no write after the advance message
    sent = [decode_job_message(m.content) for m in engine.repos.jobs_queue.client.peek_messages(max_messages=32)]
    assert [(m.kind, getattr(m, "stage", None)) for m in sent] == [("stage", 2)]


def test_a_stage_row_written_with_advance_sent_by_an_older_version_still_reads_and_runs(engine):
    job_id = engine.submit("hello_world", {"n": 3}).job.job_id
    driver = QueueDriver(engine)
    driver.run(job_id)
    stage = engine.store.get_stage(job_id, 1)
    engine.store.tasks.update_entity({"PartitionKey": job_id, "RowKey": stage_row_key(1), "advance_sent": True},
                                     mode=UpdateMode.MERGE)
    old = engine.store.get_stage(job_id, 1)
    assert (old.status, old.total, old.completed) == (stage.status, stage.total, stage.completed)
    assert engine.store.get_job(job_id).status == Status.COMPLETED


def test_the_task_io_gets_its_results_reader_when_it_is_built(engine):
    with pytest.raises(TypeError, match="results_reader"):
        StorageTaskIO(engine.settings, engine.repos.rasters, STAC_EXTENTS)  # type: ignore[call-arg]
    asked = []

    def reader(job_id: str, stage: int, first: int, last: int) -> list[dict]:
        asked.append((job_id, stage, first, last))
        return [{"n": first}]

    io = StorageTaskIO(engine.settings, engine.repos.rasters, STAC_EXTENTS, reader)
    assert io.stage_results("j", 1, 4, 7) == [{"n": 4}] and asked == [("j", 1, 4, 7)]


def test_the_engine_context_is_frozen_and_shared_by_the_front_door(engine):
    ctx = engine.context
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.max_attempts = 99  # type: ignore[misc]
    assert (engine.store, engine.settings, engine.io, engine.commits, engine.max_attempts) == (
        ctx.store, ctx.settings, ctx.io, ctx.commits, ctx.max_attempts)
    assert ctx.queues.jobs is engine.repos.jobs_queue and ctx.queues.tasks is engine.repos.tasks_queue

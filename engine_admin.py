"""Operator actions on a job: retry its failed tasks, or cancel it."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby

import engine_tracing
from engine_jobs import next_message, require_job, update_job
from errors import ConflictError
from logs import log_event
from models import (
    TERMINAL, JobRecord, StageMessage, Status, TaskMessage, TaskRecord, check_transition,
    utcnow,
)
from task_manager import Engine

logger = logging.getLogger(__name__)


@engine_tracing.traced("job.retry")
def retry(engine: Engine, job_id: str) -> JobRecord:
    """Re-queue the failed tasks of a failed job's failed stage (fresh attempts) and resume from there.

    Everything is reopened while the job is still ``failed`` (so no completion or sweeper can act on
    a half-reopened job), then the job resumes. A repeat after a crash or a lost reply finds the
    tasks already reopened and only resumes.
    """
    job = require_job(engine.store, job_id)
    engine_tracing.follows(job)  # a trace of its own, linked to the job's first
    if job.status != Status.FAILED:
        raise ConflictError(f"job {job_id} is {job.status}; only a failed job can be retried")
    check_transition(job.status, Status.PROCESSING, retry=True)
    stages, shards = engine.store.stage_rows(job_id)
    failed_stage = min((s for s in stages if s.status == Status.FAILED), key=lambda s: s.stage, default=None)
    reopened: list[TaskRecord] = []
    if failed_stage is not None:
        reopened = engine.store.list_tasks(job_id, failed_stage.stage, status=Status.FAILED, resolve=False)
        by_shard = {s.shard: s for s in shards if s.stage == failed_stage.stage}
        for shard_no, group in groupby(sorted(reopened, key=lambda t: (t.shard, t.index)), key=lambda t: t.shard):
            _reopen_shard(engine, job_id, failed_stage.stage, by_shard[shard_no], list(group))

    def resume(current: JobRecord) -> JobRecord | None:
        if current.status != Status.FAILED:
            return None
        return current.model_copy(update={"status": Status.PROCESSING, "retries": current.retries + 1,
                                          "error_details": None, "updated_at": utcnow()})

    written = update_job(engine.store, job_id, resume, job=job)
    if written is None:
        raise ConflictError(f"job {job_id} changed while retrying; it is no longer failed")
    _resume(engine, written, reopened)
    log_event(logger, "job_retried", job_id=job_id, stage=failed_stage.stage if failed_stage else None,
              tasks=len(reopened))
    return written


def _reopen_shard(engine: Engine, job_id: str, stage_no: int, shard, tasks: list[TaskRecord]) -> None:
    """Hand a shard's failed tasks back, in transactions with the shard (and once, the stage) counters."""
    for chunk in engine.store.reopen_chunks(tasks):
        reset = [t.model_copy(update={"status": Status.QUEUED, "attempts": 0, "last_error": None,
                                      "error_details": None, "result": None, "end_token": None,
                                      "lease_until": None, "ended_at": None}) for t in chunk]
        stage = None
        if shard.remaining == 0:  # the shard had ended: take its totals back out of the stage row
            row = engine.store.get_stage(job_id, stage_no)
            stage = row.model_copy(update={
                "shards_remaining": row.shards_remaining + 1, "completed": row.completed - shard.completed,
                "failed": row.failed - shard.failed, "status": Status.PROCESSING, "finisher": None,
                "ended_at": None, "advance_sent": False})
        shard = shard.model_copy(update={"remaining": shard.remaining + len(chunk),
                                         "failed": shard.failed - len(chunk), "finisher": None})
        engine.store.reopen(reset, shard, stage)
        shard = engine.store.get_shard(job_id, stage_no, shard.shard)


def _resume(engine: Engine, job: JobRecord, reopened: list[TaskRecord]) -> None:
    """Send what carries the job on: the reopened tasks' messages, the message of its earliest
    unfinished stage, or what follows its last completed stage (``engine_jobs.next_message``)."""
    stages = sorted(engine.store.stage_rows(job.job_id)[0], key=lambda s: s.stage)
    traceparent = engine_tracing.inject()
    open_stage = next((s for s in stages if s.status != Status.COMPLETED), None)
    if open_stage is not None and reopened and open_stage.stage == reopened[0].stage:
        engine.repos.tasks_queue.send_many([TaskMessage(job_id=job.job_id, task_id=t.task_id, traceparent=traceparent)
                                            for t in reopened])
        engine.store.mark_stage(job.job_id, open_stage.stage, dispatched=True)
    elif open_stage is not None:
        engine.repos.jobs_queue.send(StageMessage(job_id=job.job_id, stage=open_stage.stage, traceparent=traceparent))
    elif stages:
        engine.repos.jobs_queue.send(next_message(job, stages[-1].stage, Status.COMPLETED))
    else:
        engine.repos.jobs_queue.send(StageMessage(job_id=job.job_id, stage=1, traceparent=traceparent))


@engine_tracing.traced("job.cancel")
def cancel(engine: Engine, job_id: str) -> JobRecord:
    """Cancel a job: queued tasks never start, running ones finish but advance nothing.

    Before it answers, every counter shard of the job's unfinished stages is marked; a claim commits
    If-Match on its shard, so once the cancel is acknowledged no task starts, not even one a fan-out
    chunk in flight writes afterwards (its worker finds the mark and cancels the task).

    Safe to repeat: a lost reply to the cancel write is recognised (write id); cancelling a cancelled
    job still flips whatever queued tasks a crash left behind, then answers 409 as before.
    """
    job = require_job(engine.store, job_id)
    engine_tracing.follows(job)

    def mark(current: JobRecord) -> JobRecord | None:
        if current.status in TERMINAL:
            return None
        check_transition(current.status, Status.CANCELLED)
        return current.model_copy(update={"status": Status.CANCELLED, "updated_at": utcnow(),
                                          **current.webhook_fields()})

    written = update_job(engine.store, job_id, mark, job=job)
    if written is not None:
        engine.notify(written)
    current = written or require_job(engine.store, job_id)
    flipped = _flip_queued(engine, job_id) if current.status == Status.CANCELLED else 0
    if written is None:
        raise ConflictError(f"job {job_id} is already {current.status}")
    log_event(logger, "job_cancelled", job_id=job_id, tasks_cancelled=flipped)
    return written


def _flip_queued(engine: Engine, job_id: str) -> int:
    """Mark the job's unfinished stages and their counter shards cancelled, then every queued task of them
    (conditional, idempotent)."""
    flipped = 0
    for stage in engine.store.stage_rows(job_id)[0]:
        if stage.status in TERMINAL:
            continue
        engine.store.mark_cancelled(job_id, stage.stage, stage.shards)
        queued = engine.store.list_tasks(job_id, stage.stage, status=Status.QUEUED, resolve=False)
        with ThreadPoolExecutor(max_workers=engine.settings.fanout_threads) as pool:
            here = sum(pool.map(engine.cancel_task, queued))
        total = engine.store.count_tasks(job_id, stage.stage, Status.CANCELLED) if here else stage.cancelled_tasks
        engine.store.mark_stage(job_id, stage.stage, cancelled_tasks=total)
        flipped += here
    return flipped

"""Operator actions on a job: retry its failed tasks, or cancel it."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from typing import cast

import engine_faults
import engine_tracing
from engine_context import EngineContext
from engine_jobs import next_message, notify, require_job, update_job
from engine_tasks import cancel_task
from errors import ConflictError, TransientError
from logs import log_event
from models import (
    TERMINAL, JobRecord, ShardRecord, StageMessage, StageRecord, Status, TaskMessage, TaskRecord,
    check_transition, utcnow,
)

logger = logging.getLogger(__name__)


MAX_REOPEN_ROUNDS = 20


@engine_tracing.traced("job.retry")
def retry(ctx: EngineContext, job_id: str) -> JobRecord:
    """Re-queue the failed tasks of a failed job's failed stage (fresh attempts) and resume from there.

    In steps, each safe to repeat: the stage to reopen is recorded on the job while it is still ``failed``
    (``reopen_stage``); its failed tasks are handed back, each transaction with its counters (nothing runs
    or advances them yet: they have no messages and the job is failed); the job moves to processing; the
    stage's untried tasks get their messages; the record is cleared. A retry repeated after a crash at any
    point, or the sweeper after its grace, finds the record and finishes the reopen (``finish_retry``).
    """
    job = require_job(ctx.store, job_id)
    engine_tracing.follows(job)  # a trace of its own, linked to the job's first
    if job.reopen_stage is None and job.status == Status.FAILED:
        job = _begin(ctx, job)
    elif job.reopen_stage is None or job.status not in (Status.FAILED, Status.PROCESSING):
        if job.reopen_stage is not None:
            finish_retry(ctx, job)  # a record a crash left on a job that has ended since: cleared
        raise ConflictError(f"job {job_id} is {job.status}; only a failed job can be retried")
    return finish_retry(ctx, job)


def _begin(ctx: EngineContext, job: JobRecord) -> JobRecord:
    """Record the earliest failed stage as the one to reopen (the job stays failed). A job failed with no
    failed stage (planning, completion) has nothing to reopen: it resumes at once."""
    check_transition(job.status, Status.PROCESSING, retry=True)
    stages, _ = ctx.store.stage_rows(job.job_id)
    failed_stage = min((s.stage for s in stages if s.status == Status.FAILED), default=None)
    if failed_stage is None:
        written = update_job(ctx.store, job.job_id, _resumed, job=job)
        if written is None:
            raise ConflictError(f"job {job.job_id} changed while retrying; it is no longer failed")
        _resume(ctx, written)
        log_event(logger, "job_retried", job_id=job.job_id, stage=None, tasks=0)
        return written

    def record(current: JobRecord) -> JobRecord | None:
        if current.status != Status.FAILED or current.reopen_stage is not None:
            return None
        return current.model_copy(update={"reopen_stage": failed_stage, "updated_at": utcnow()})

    written = update_job(ctx.store, job.job_id, record, job=job)
    if written is None:  # another retry recorded one first (then it is finished here too), or the job moved
        written = require_job(ctx.store, job.job_id)
        if written.reopen_stage is None:
            raise ConflictError(f"job {job.job_id} changed while retrying; it is no longer failed")
    engine_faults.point("retry_marked")
    return written


def finish_retry(ctx: EngineContext, job: JobRecord) -> JobRecord:
    """Carry a recorded retry to its end from wherever it stopped; every step is safe to repeat.

    A failed job: hand back the stage's failed tasks still failed, then move the job to processing. A
    processing job: send a message to each of the stage's tasks still queued and untried (a task that
    already runs ignores or defers the duplicate). Then clear the record (on an ended job: only that).
    """
    stage_no = job.reopen_stage
    if stage_no is None:
        return job
    reopened = 0
    if job.status == Status.FAILED:
        reopened = _reopen_failed(ctx, job.job_id, stage_no)
        job = update_job(ctx.store, job.job_id, _resumed, job=job) or require_job(ctx.store, job.job_id)
        engine_faults.point("retry_resumed")
    sent = _send_untried(ctx, job, stage_no) if job.status == Status.PROCESSING else 0

    def clear(current: JobRecord) -> JobRecord | None:
        return current.model_copy(update={"reopen_stage": None}) if current.reopen_stage is not None else None

    job = update_job(ctx.store, job.job_id, clear, job=job) or require_job(ctx.store, job.job_id)
    log_event(logger, "job_retried", job_id=job.job_id, stage=stage_no, tasks=reopened, messages=sent)
    return job


def _resumed(current: JobRecord) -> JobRecord | None:
    """A failed job moving on after a retry (None: it is not failed)."""
    if current.status != Status.FAILED:
        return None
    return current.model_copy(update={"status": Status.PROCESSING, "retries": current.retries + 1,
                                      "error_details": None, "updated_at": utcnow()})


def _reopen_failed(ctx: EngineContext, job_id: str, stage_no: int) -> int:
    """Hand back every failed task of a stage, shard by shard; a row moved meanwhile (another finisher of the
    same retry) means looking again. Returns how many this call handed back."""
    reopened = 0
    for _ in range(MAX_REOPEN_ROUNDS):
        failed = ctx.store.list_tasks(job_id, stage_no, status=Status.FAILED, resolve=False)
        if not failed:
            return reopened
        _, shards = ctx.store.stage_counters(job_id, stage_no)
        try:
            for shard_no, group in groupby(sorted(failed, key=lambda t: (t.shard, t.index)), key=lambda t: t.shard):
                reopened += _reopen_shard(ctx, job_id, stage_no, shards[shard_no], list(group))
        except ConflictError:
            continue
    raise TransientError(f"job {job_id}: reopening stage {stage_no} stayed contended; retry again")


def _reopen_shard(ctx: EngineContext, job_id: str, stage_no: int, shard: ShardRecord, tasks: list[TaskRecord]) -> int:
    """Hand a shard's failed tasks back, in transactions with the shard (and once, the stage) counters.

    Their claims counted as started once; the fresh attempts will count again, so those claims move to
    ``retried`` (every claim still counted once, and ``started`` never exceeds ``total``)."""
    for chunk in ctx.store.reopen_chunks(tasks):
        reset = [t.model_copy(update={"status": Status.QUEUED, "attempts": 0, "last_error": None,
                                      "error_details": None, "result": None, "end_token": None,
                                      "lease_until": None, "ended_at": None}) for t in chunk]
        stage = None
        if shard.remaining == 0:  # the shard had ended: take its totals back out of the stage row
            row = cast(StageRecord, ctx.store.get_stage(job_id, stage_no))  # its shards exist, so the stage row does
            stage = row.model_copy(update={
                "shards_remaining": row.shards_remaining + 1, "completed": row.completed - shard.completed,
                "failed": row.failed - shard.failed, "status": Status.PROCESSING, "finisher": None,
                "ended_at": None})
        claimed = sum(1 for t in chunk if t.attempts > 0)
        shard = shard.model_copy(update={"remaining": shard.remaining + len(chunk),
                                         "failed": shard.failed - len(chunk), "finisher": None,
                                         "started": shard.started - claimed, "retried": shard.retried + claimed})
        ctx.store.reopen(reset, shard, stage)
        engine_faults.point("retry_shard_reopened")
        shard = cast(ShardRecord, ctx.store.get_shard(job_id, stage_no, shard.shard))  # reopened just now: it exists
    return len(tasks)


def _send_untried(ctx: EngineContext, job: JobRecord, stage_no: int) -> int:
    """A message to each task of the stage still queued and never tried (what a retry handed back)."""
    untried = [t for t in ctx.store.list_tasks(job.job_id, stage_no, status=Status.QUEUED, resolve=False)
               if t.attempts == 0]
    traceparent = engine_tracing.inject()
    ctx.queues.tasks.send_many([TaskMessage(job_id=job.job_id, task_id=t.task_id, traceparent=traceparent)
                                        for t in untried])
    ctx.store.mark_stage(job.job_id, stage_no, dispatched=True)
    return len(untried)


def _resume(ctx: EngineContext, job: JobRecord) -> None:
    """Send what carries on a job that resumes with nothing reopened: the message of its earliest unfinished
    stage, or what follows its last completed stage (``engine_jobs.next_message``)."""
    stages = sorted(ctx.store.stage_rows(job.job_id)[0], key=lambda s: s.stage)
    traceparent = engine_tracing.inject()
    open_stage = next((s for s in stages if s.status != Status.COMPLETED), None)
    if open_stage is not None:
        ctx.queues.jobs.send(StageMessage(job_id=job.job_id, stage=open_stage.stage, traceparent=traceparent))
    elif stages:
        ctx.queues.jobs.send(next_message(job, stages[-1].stage, Status.COMPLETED))
    else:
        ctx.queues.jobs.send(StageMessage(job_id=job.job_id, stage=1, traceparent=traceparent))


@engine_tracing.traced("job.cancel")
def cancel(ctx: EngineContext, job_id: str) -> JobRecord:
    """Cancel a job: queued tasks never start, running ones finish but advance nothing.

    Before it answers, every counter shard of the job's unfinished stages is marked; a claim commits
    If-Match on its shard, so once the cancel is acknowledged no task starts, not even one a fan-out
    chunk in flight writes afterwards (its worker finds the mark and cancels the task).

    Safe to repeat: a lost reply to the cancel write is recognised (write id); cancelling a cancelled
    job still flips whatever queued tasks a crash left behind, then answers 409 as before.
    """
    job = require_job(ctx.store, job_id)
    engine_tracing.follows(job)

    def mark(current: JobRecord) -> JobRecord | None:
        if current.status in TERMINAL:
            return None
        check_transition(current.status, Status.CANCELLED)
        return current.model_copy(update={"status": Status.CANCELLED, "updated_at": utcnow(),
                                          **current.webhook_fields()})

    written = update_job(ctx.store, job_id, mark, job=job)
    if written is not None:
        notify(ctx, written)
    current = written or require_job(ctx.store, job_id)
    flipped = _flip_queued(ctx, job_id) if current.status == Status.CANCELLED else 0
    if written is None:
        raise ConflictError(f"job {job_id} is already {current.status}")
    log_event(logger, "job_cancelled", job_id=job_id, tasks_cancelled=flipped)
    return written


def _flip_queued(ctx: EngineContext, job_id: str) -> int:
    """Mark the job's unfinished stages and their counter shards cancelled, then every queued task of them
    (conditional, idempotent)."""
    flipped = 0
    for stage in ctx.store.stage_rows(job_id)[0]:
        if stage.status in TERMINAL:
            continue
        ctx.store.mark_cancelled(job_id, stage.stage, stage.shards)
        queued = ctx.store.list_tasks(job_id, stage.stage, status=Status.QUEUED, resolve=False)
        with ThreadPoolExecutor(max_workers=ctx.settings.fanout_threads) as pool:
            here = sum(pool.map(lambda task: cancel_task(ctx, task), queued))
        total = ctx.store.count_tasks(job_id, stage.stage, Status.CANCELLED) if here else stage.cancelled_tasks
        ctx.store.mark_stage(job_id, stage.stage, cancelled_tasks=total)
        flipped += here
    return flipped

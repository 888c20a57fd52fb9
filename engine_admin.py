"""Operator actions on a job: retry its failed tasks, or cancel it."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby

from errors import ConflictError, NotFoundError
from logs import log_event
from models import (
    TERMINAL, CompletionMessage, JobRecord, StageMessage, Status, TaskMessage, TaskRecord, check_transition,
    is_job_id, utcnow,
)
from task_manager import Engine

logger = logging.getLogger(__name__)
REOPEN_CHUNK = 98  # tasks per transaction, leaving room for the shard and stage rows


def _job(engine: Engine, job_id: str) -> JobRecord:
    job = engine.store.get_job(job_id) if is_job_id(job_id) else None
    if job is None:
        raise NotFoundError(f"no job with id {job_id!r}")
    return job


def retry(engine: Engine, job_id: str) -> JobRecord:
    """Re-queue the failed tasks of a failed job's failed stage (fresh attempts) and resume from there."""
    job = _job(engine, job_id)
    if job.status != Status.FAILED:
        raise ConflictError(f"job {job_id} is {job.status}; only a failed job can be retried")
    check_transition(job.status, Status.PROCESSING, retry=True)
    stages, shards = engine.store.stage_rows(job_id)
    failed_stage = min((s for s in stages if s.status == Status.FAILED), key=lambda s: s.stage, default=None)
    try:
        job = engine.store.replace_job(job.model_copy(update={
            "status": Status.PROCESSING, "retries": job.retries + 1, "error_details": None,
            "updated_at": utcnow()}))
    except ConflictError:
        raise ConflictError(f"job {job_id} changed while retrying; try again") from None
    if failed_stage is None:  # the job failed outside a stage (planning, a poisoned stage message)
        _resume(engine, job, stages)
        return job
    failed = engine.store.list_tasks(job_id, failed_stage.stage, status=Status.FAILED, resolve=False)
    by_shard = {s.shard: s for s in shards if s.stage == failed_stage.stage}
    for shard_no, group in groupby(sorted(failed, key=lambda t: (t.shard, t.index)), key=lambda t: t.shard):
        _reopen_shard(engine, job_id, failed_stage.stage, by_shard[shard_no], list(group))
    engine.repos.tasks_queue.send_many([TaskMessage(job_id=job_id, task_id=t.task_id) for t in failed])
    engine.store.mark_stage(job_id, failed_stage.stage, dispatched=True)
    log_event(logger, "job_retried", job_id=job_id, stage=failed_stage.stage, tasks=len(failed))
    return job


def _reopen_shard(engine: Engine, job_id: str, stage_no: int, shard, tasks: list[TaskRecord]) -> None:
    """Hand a shard's failed tasks back, in transactions with the shard (and once, the stage) counters."""
    for start in range(0, len(tasks), REOPEN_CHUNK):
        chunk = tasks[start:start + REOPEN_CHUNK]
        reset = [t.model_copy(update={"status": Status.QUEUED, "attempts": 0, "last_error": None,
                                      "error_details": None, "result": None, "end_token": None,
                                      "lease_until": None, "ended_at": None}) for t in chunk]
        stage = None
        if shard.remaining == 0:  # the shard had ended: take its totals back out of the stage row
            row = engine.store.get_stage(job_id, stage_no)
            stage = row.model_copy(update={
                "shards_remaining": row.shards_remaining + 1, "completed": row.completed - shard.completed,
                "failed": row.failed - shard.failed, "status": Status.PROCESSING, "finisher": None,
                "ended_at": None, "advance_sent": False, "dispatched": False})
        shard = shard.model_copy(update={"remaining": shard.remaining + len(chunk),
                                         "failed": shard.failed - len(chunk), "finisher": None})
        engine.store.reopen(reset, shard, stage)
        shard = engine.store.get_shard(job_id, stage_no, shard.shard)


def _resume(engine: Engine, job: JobRecord, stages: list) -> None:
    """Re-send the message that carries the job on from its last stage row."""
    if not stages:
        engine.repos.jobs_queue.send(StageMessage(job_id=job.job_id, stage=1))
        return
    last = max(stages, key=lambda s: s.stage)
    if last.status == Status.COMPLETED and last.stage < job.total_stages:
        engine.repos.jobs_queue.send(StageMessage(job_id=job.job_id, stage=last.stage + 1))
    elif last.status == Status.COMPLETED:
        engine.repos.jobs_queue.send(CompletionMessage(job_id=job.job_id))
    else:
        engine.repos.jobs_queue.send(StageMessage(job_id=job.job_id, stage=last.stage))


def cancel(engine: Engine, job_id: str) -> JobRecord:
    """Cancel a job: queued tasks never start, running ones finish but advance nothing."""
    job = _job(engine, job_id)
    while True:
        if job.status in TERMINAL:
            raise ConflictError(f"job {job_id} is already {job.status}")
        check_transition(job.status, Status.CANCELLED)
        try:
            job = engine.store.replace_job(job.model_copy(update={
                "status": Status.CANCELLED, "updated_at": utcnow(),
                "webhook": "pending" if job.callback_url else None}))
            engine.notify(job)
            break
        except ConflictError:
            job = _job(engine, job_id)
    flipped = 0
    for stage in engine.store.stage_rows(job_id)[0]:
        if stage.status in TERMINAL:
            continue
        engine.store.mark_stage(job_id, stage.stage, cancelled=True)
        queued = engine.store.list_tasks(job_id, stage.stage, status=Status.QUEUED, resolve=False)
        with ThreadPoolExecutor(max_workers=engine.settings.fanout_threads) as pool:
            flipped += sum(pool.map(engine.cancel_task, queued))
    log_event(logger, "job_cancelled", job_id=job_id, tasks_cancelled=flipped)
    return job

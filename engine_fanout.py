"""Stage fan-out: plan once, write the counters, then task rows and their messages in bounded chunks.

A stage of any size is fanned out by a chain of stage-message invocations, each doing at most
``FANOUT_CHUNK`` tasks, so no invocation does unbounded work and any instance can continue:

1. the first invocation plans the stage (a plan larger than one chunk, or one that reads storage, is
   stored once as a blob: every chunk, and every redelivery, sees the same tasks), then creates the
   stage row and its counter shards in one transaction, so counts are whole before any task runs;
2. each invocation writes its chunk's task rows (batches in parallel), then sends their messages in
   index order on every sending thread (neighbouring tasks reach a host together), then moves the
   stage's ``fanned_out`` cursor with a conditional write and sends the continuation message
   (``from_task``); the last chunk marks the stage ``dispatched``. Short tasks (a handler's
   ``tasks_per_message``) go out as runs: one message names up to that many neighbouring tasks.

A duplicate or late continuation whose ``from_task`` is not the cursor does nothing; an interrupted
chunk is redone by the redelivered message (existing row batches are skipped, and only their tasks
still queued and untried get a message again), and a chain whose message was lost is resumed by the sweeper.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import engine_faults
import engine_jobs
import engine_tracing
from base_controller import JobController, TaskOutcome
from controller_factory import get_controller, get_handler
from engine_context import EngineContext
from engine_counters import shard_count
from engine_jobs import describe, finish_job, move_job
from errors import ConflictError, TooLargeError, TransientError
from logs import log_event
from models import (
    TERMINAL, JobRecord, ShardRecord, StageMessage, StageRecord, Status, TaskMessage, TaskRecord, make_task_id,
    utcnow,
)
from repository_rules import BATCH_MAX_OPERATIONS

logger = logging.getLogger(__name__)
ROW_WRITERS = 4  # row transactions in flight ahead of the sends
RUN_MIN_MESSAGES = 32  # a stage of runs keeps at least this many messages (two hosts' batchSize of 16)


@engine_tracing.consumer("stage.run")
def run_stage(ctx: EngineContext, msg: StageMessage) -> None:
    """Write stage ``msg.stage``'s rows (once), mark the job, queue the task messages."""
    job = ctx.store.get_job(msg.job_id)
    if job is None or job.status in TERMINAL or msg.stage < job.stage:
        log_event(logger, "stage_message_ignored", job_id=msg.job_id, stage=msg.stage,
                  reason="unknown job" if job is None else f"job is {job.status} at stage {job.stage}")
        return
    controller = get_controller(job.job_type)
    if msg.stage > controller.total_stages or not _previous_stage_ended(ctx, job, msg.stage):
        log_event(logger, "stage_message_ignored", logging.WARNING, job_id=job.job_id, stage=msg.stage,
                  reason="stage out of range or previous stage not ended")
        return
    stage = ctx.store.get_stage(job.job_id, msg.stage)
    if stage is not None and stage.dispatched:
        log_event(logger, "stage_already_dispatched", job_id=job.job_id, stage=msg.stage)
        return
    if stage is not None and msg.from_task is not None and msg.from_task != stage.fanned_out:
        log_event(logger, "stage_chunk_ignored", job_id=job.job_id, stage=msg.stage, from_task=msg.from_task,
                  fanned_out=stage.fanned_out)
        return
    if stage is None or not stage.plan_stored:  # deterministic: planning again gives the same tasks
        planned = plan(ctx, job, controller, msg.stage)
        if planned is None:
            return
        if stage is None:
            stage, planned = new_stage(ctx, job, controller, msg.stage, planned)
    else:
        planned = stored_plan(ctx, stage)
    engine_faults.point("stage_rows_written")
    if not move_job(ctx.store, job, stage=msg.stage, stage_name=stage.name):
        return
    fan_out_chunk(ctx, job, stage, planned)


def _previous_stage_ended(ctx: EngineContext, job: JobRecord, number: int) -> bool:
    if number == 1:
        return True
    previous = ctx.store.get_stage(job.job_id, number - 1)
    return previous is not None and previous.status == Status.COMPLETED


def plan_name(job_id: str, stage: int) -> str:
    """Blob (in the payload container) holding a stage's stored plan."""
    return f"{job_id}/plans/stage-{stage:02d}.json"


def plan(ctx: EngineContext, job: JobRecord, controller: JobController[Any],
         number: int) -> list[dict[str, Any]] | None:
    """Each task's parameters for stage ``number``; None after failing the job (planning is deterministic:
    a retry would fail the same way)."""
    definition = controller.stage(number)
    previous = _previous(ctx, job.job_id, number - 1, definition.plan_reads_results) if number > 1 else []
    try:
        params = controller.parameters_model.model_validate(job.parameters)
        if definition.plan_uses_io:
            planned = controller.plan_stage(number, params, previous, ctx.io)
        else:
            planned = controller.plan_stage(number, params, previous)
        if not planned:
            raise ValueError(f"stage {number} ({definition.name}) has no tasks to run")
        if len(planned) > ctx.settings.max_tasks_per_stage:
            raise TooLargeError(f"too_large: stage {number} ({definition.name}) planned {len(planned):,} "
                                f"tasks; the limit is {ctx.settings.max_tasks_per_stage:,} (MAX_TASKS_PER_STAGE)")
        return planned
    except TransientError:
        raise
    except Exception as exc:  # noqa: BLE001
        finish_job(ctx, job.job_id, Status.FAILED, error=f"planning stage {number} ({definition.name}) "
                                                         f"failed: {describe(exc)}")
        return None


def _previous(ctx: EngineContext, job_id: str, number: int, with_results: bool) -> list[TaskOutcome]:
    """A stage's outcomes for the next planner: whole, or status and index only (one projected query)."""
    if with_results:
        return engine_jobs.outcomes(ctx.store, job_id, number)
    return [TaskOutcome(task_id=make_task_id(job_id, number, index), stage=number, index=index, status=status)
            for index, status in ctx.store.task_statuses(job_id, number)]


def new_stage(ctx: EngineContext, job: JobRecord, controller: JobController[Any], number: int,
              planned: list[dict[str, Any]]) -> tuple[StageRecord, list[dict[str, Any]]]:
    """Create a stage's counters (plan stored first when it spans chunks); returns the stored row and
    the plan every chunk must use."""
    definition = controller.stage(number)
    store_plan = definition.plan_uses_io or len(planned) > ctx.settings.fanout_chunk
    if store_plan:  # fixed the first time: a redelivery or a later chunk must plan the same tasks
        planned = ctx.blobs.put_json_once(plan_name(job.job_id, number), planned)
    shards = shard_count(len(planned), job.counter_shards or ctx.shards_per_stage)
    shard_rows = [ShardRecord(job_id=job.job_id, stage=number, shard=s, total=len(range(s, len(planned), shards)),
                              remaining=len(range(s, len(planned), shards))) for s in range(shards)]
    stage = StageRecord(job_id=job.job_id, stage=number, name=definition.name, task_type=definition.task_type,
                        total=len(planned), shards=shards, shards_remaining=shards, plan_stored=store_plan,
                        tolerated_failures=controller.tolerated_failures(len(planned), number),
                        fanout_at=utcnow())
    return ctx.store.create_counters(stage, shard_rows), planned


def stored_plan(ctx: EngineContext, stage: StageRecord) -> list[dict[str, Any]]:
    """The plan a stage was created with (only for stages whose plan is stored)."""
    planned: list[dict[str, Any]] = ctx.blobs.get_named_json(plan_name(stage.job_id, stage.stage))
    return planned


def fan_out_chunk(ctx: EngineContext, job: JobRecord, stage: StageRecord, planned: list[dict[str, Any]]) -> None:
    """Write the next chunk's task rows and send their messages; move the cursor; continue or finish.

    A batch whose rows existed already (a redelivered first message or continuation, a sweeper's re-drive)
    may have gone out before: its messages go only to tasks still queued and untried.
    """
    start = stage.fanned_out
    end = min(stage.total, start + ctx.settings.fanout_chunk)
    if start >= end:  # every chunk went out; only the flag is missing
        ctx.store.mark_stage(job.job_id, stage.stage, dispatched=True)
        return
    if start > 0 and _backlogged(ctx, job, stage):
        return
    ctx.store.mark_stage(job.job_id, stage.stage, fanout_at=utcnow())  # a live chain: the sweeper waits
    shards = stage.shards
    version = get_handler(stage.task_type).version
    tasks = [TaskRecord(job_id=job.job_id, task_id=make_task_id(job.job_id, stage.stage, i), stage=stage.stage,
                        index=i, shard=i % shards, task_type=stage.task_type, task_version=version,
                        parameters=planned[i]) for i in range(start, end)]
    began = time.perf_counter()
    batches = [tasks[i:i + BATCH_MAX_OPERATIONS] for i in range(0, len(tasks), BATCH_MAX_OPERATIONS)]
    traceparent = engine_tracing.inject()  # this chunk's span: the parent of its tasks (sent from other threads)
    # Rows are written a few batches ahead; each batch's messages go out, in index order, as soon as its
    # rows exist (a host then receives neighbouring tasks together and group commit reads them in one
    # range query), so rows and sends overlap and a message never precedes its row.
    send = ctx.queues.tasks.send
    per_message = run_length(get_handler(stage.task_type).tasks_per_message, stage.total)
    with ThreadPoolExecutor(max_workers=ROW_WRITERS) as rows, \
            ThreadPoolExecutor(max_workers=ctx.settings.fanout_threads) as sends:
        written = [rows.submit(ctx.store.create_tasks, b) for b in batches]
        sent = []
        for batch, done in zip(batches, written, strict=True):
            if done.result():  # rows written before: only the tasks still untried get a message
                batch = _untried(ctx, batch)
            sent += [sends.submit(send, TaskMessage(job_id=job.job_id, task_id=batch_ids[0], count=len(batch_ids),
                                                    traceparent=traceparent))
                     for batch_ids in runs(batch, per_message)]
        for future in sent:
            future.result()
    engine_tracing.fanned_out(stage.task_type, stage.name, end - start, end, time.perf_counter() - began)
    engine_faults.point("task_messages_sent")
    if not _advance_cursor(ctx, stage, end):
        return
    if end < stage.total:
        ctx.queues.jobs.send(StageMessage(job_id=job.job_id, stage=stage.stage, from_task=end,
                                                  traceparent=traceparent))
    log_event(logger, "stage_dispatched" if end >= stage.total else "stage_chunk_dispatched", job_id=job.job_id,
              stage=stage.stage, tasks=end - start, fanned_out=end, total=stage.total,
              send_ms=round((time.perf_counter() - began) * 1000))


def _untried(ctx: EngineContext, batch: list[TaskRecord]) -> list[TaskRecord]:
    """The tasks of a batch whose rows are still queued and never tried (one range query)."""
    stored = {t.index: t for t in ctx.store.task_range(batch[0].job_id, batch[0].stage, batch[0].index,
                                                          batch[-1].index)}
    return [t for t in batch if (row := stored.get(t.index)) is not None
            and row.status == Status.QUEUED and row.attempts == 0]


def run_length(tasks_per_message: int, total: int) -> int:
    """Tasks per message for a stage: the handler's run length, but a stage keeps at least
    ``RUN_MIN_MESSAGES`` messages, so a small stage still spreads over every host's batch."""
    return max(1, min(tasks_per_message, total // RUN_MIN_MESSAGES))


def runs(tasks: list[TaskRecord], length: int) -> list[list[str]]:
    """Task ids in runs of up to ``length`` consecutive indices (a gap starts a new run)."""
    out: list[list[str]] = []
    previous = -2
    for task in tasks:
        if out and len(out[-1]) < length and task.index == previous + 1:
            out[-1].append(task.task_id)
        else:
            out.append([task.task_id])
        previous = task.index
    return out


def _backlogged(ctx: EngineContext, job: JobRecord, stage: StageRecord) -> bool:
    """Backpressure: while the tasks queue holds more than FANOUT_MAX_BACKLOG messages, the chain waits
    (the same continuation, delayed; ``fanout_at`` is touched so the sweeper sees a live chain)."""
    limit = ctx.settings.fanout_max_backlog
    depth = ctx.queues.tasks.depth() if limit else 0
    if depth <= limit:
        return False
    ctx.store.mark_stage(job.job_id, stage.stage, fanout_at=utcnow())
    ctx.queues.jobs.send(StageMessage(job_id=job.job_id, stage=stage.stage, from_task=stage.fanned_out,
                                              traceparent=engine_tracing.carry(job)),
                                 delay_s=ctx.settings.fanout_pause_s)
    log_event(logger, "stage_fanout_paused", job_id=job.job_id, stage=stage.stage, queue_depth=depth,
              fanned_out=stage.fanned_out, total=stage.total)
    return True


def _advance_cursor(ctx: EngineContext, stage: StageRecord, end: int) -> bool:
    """Move ``fanned_out`` forward to ``end`` (conditional); False if another invocation already did."""
    current = stage
    for _ in range(50):
        if current.fanned_out >= end:
            return False
        try:
            ctx.store.replace_stage(current.model_copy(update={
                "fanned_out": end, "dispatched": end >= current.total, "fanout_at": utcnow()}))
            return True
        except ConflictError:  # the counters moved (tasks ending): read and try again
            read = ctx.store.get_stage(stage.job_id, stage.stage)
            if read is None:
                return False
            current = read
    raise TransientError(f"stage {stage.stage} of job {stage.job_id}: its cursor stayed contended")


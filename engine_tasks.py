"""Running a task: claim it (a lease, If-Match with its counters), call its handler, then release it (a
transient error: back to the queue with backoff) or end it; the one end that ends its stage advances it
(``engine_complete.advance``).

Exactly-once end: a task's end is one entity-group transaction over its task row, its counter shard and
(when that shard reaches zero) the stage row, each If-Match, group-committed with other ends of the job
(``engine_group_commit``). Only one transaction can take the stage's ``shards_remaining`` to zero; its
writer (``finisher``) sends the one advance message. A duplicate delivery cannot commit (its task ETag is
stale) and re-reads to learn what happened.

Runs: one tasks-queue message may name up to ``tasks_per_message`` neighbouring short tasks of a stage (a
queue message costs three requests whatever its task does; fan-out sends such tasks in runs,
``engine_fanout.runs``). Each task of a run is still claimed, retried, ended and counted alone, as its own
message would be.
"""
from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from typing import Any, Callable, Literal, cast

from pydantic import ValidationError

import engine_complete
import engine_faults
import engine_tracing
from base_controller import Completed, Failed, Retry, TaskContext, TaskResult, output_json
from controller_factory import TASK_HANDLERS, get_handler
from engine_context import EngineContext
from engine_counters import Change
from engine_group_commit import ProgressReporter, TaskWrite
from errors import (
    ConflictError, EntityTooLargeError, ErrorCode, JobCancelledError, OrchestratorError, TransientError, error_code,
    validation_errors,
)
from logs import log_context, log_event, redact
from models import TERMINAL, Status, TaskMessage, TaskRecord, parse_task_id, utcnow

logger = logging.getLogger(__name__)
MAX_QUEUE_DELAY_S = 7 * 24 * 3600 - 60
LEASE_EXPIRED = "did not finish within"  # in last_error when an attempt overran its lease (gave_up_code)
UNSTORABLE_END = "the task's end could not be stored (over Azure Table Storage's limits); see the function logs"
RUN_BUDGET_S = 60  # a run starts no task after this; with a 300 s task limit it ends within 360 s of 600


def run_task(ctx: EngineContext, msg: TaskMessage, dequeue_count: int = 1) -> None:
    """Run one task once: claim it (lease), call its handler, record the outcome, advance if last.
    A message naming a run of tasks runs them in order (``run_many``)."""
    if msg.count > 1:
        run_many(ctx, msg, dequeue_count)
        return
    run_one(ctx, msg, dequeue_count)


@engine_tracing.consumer("task.run")
def run_one(ctx: EngineContext, msg: TaskMessage, dequeue_count: int,
            row: TaskRecord | None | Literal[False] = False) -> None:
    """One task; ``row``: its row as a run read it (False: read it here)."""
    _, stage_no, index = parse_task_id(msg.task_id)
    with log_context(job_id=msg.job_id, task_id=msg.task_id):
        task = ctx.commits.read(msg.job_id, stage_no, index) if row is False else row
        if task is not None:
            handler = TASK_HANDLERS.get(task.task_type)
            with log_context(task_type=task.task_type, task_version=handler.version if handler else None):
                _run_task(ctx, msg, task, stage_no, dequeue_count)
            return
        _run_task(ctx, msg, task, stage_no, dequeue_count)


def _run_task(ctx: EngineContext, msg: TaskMessage, task: TaskRecord | None, stage_no: int, dequeue_count: int) -> None:
    ids: dict[str, Any] = {"job_id": msg.job_id, "task_id": msg.task_id, "dequeue_count": dequeue_count}
    if task is None or task.status in TERMINAL:  # includes tasks a cancel has flipped
        log_event(logger, "task_message_ignored", status=task.status if task else None, **ids)
        return
    if task.attempts > 0 and _cancelled(ctx, task):  # a retry or a takeover: honour a cancel first
        return
    now, skew = utcnow(), ctx.settings.max_clock_skew_s
    if task.status == Status.PROCESSING:
        if task.lease_until is not None and task.lease_held(now, skew):  # live, or might be by its claimer's clock
            delay = math.ceil((task.lease_until - now).total_seconds() + skew) + 1
            ctx.queues.tasks.send(msg, delay_s=min(delay, MAX_QUEUE_DELAY_S))
            log_event(logger, "task_busy_deferred", delay_s=delay, **ids)
            return
        task.last_error = (f"attempt {task.attempts} {LEASE_EXPIRED} its {task.time_limit_s}s "
                           f"lease (worker stopped or overran)")
    if task.attempts >= ctx.max_attempts:
        give_up(ctx, task, msg)
        return
    handler = get_handler(task.task_type)
    limit = handler.time_limit_s or ctx.settings.task_time_limit_s
    claim = task.model_copy(update={
        "status": Status.PROCESSING, "attempts": task.attempts + 1, "started_at": now, "progress": None,
        "task_version": handler.version, "time_limit_s": limit, "lease_until": now + timedelta(seconds=limit)})
    change = Change(task.shard, started=int(task.attempts == 0), retried=int(task.attempts > 0),
                    progress=-(task.progress or 0))
    try:
        # a write that returns was settled with its stored row (GroupCommit.write raises otherwise)
        claimed = cast(TaskRecord, ctx.commits.write(task.job_id, TaskWrite("claim", claim, change)).written)
    except JobCancelledError:  # the job was cancelled before this claim could land: the task never starts
        cancel_task(ctx, task)
        log_event(logger, "task_cancelled", status=task.status, **ids)
        return
    except ConflictError:
        log_event(logger, "task_claimed_elsewhere", **ids)
        return
    task = claimed
    try:
        _run_claimed(ctx, task, stage_no)
    except TransientError as exc:  # storage trouble in the engine: hand the task back, let the host retry
        _release(ctx, task, str(exc))
        raise


def _run_claimed(ctx: EngineContext, task: TaskRecord, stage_no: int) -> None:
    engine_faults.point("task_claimed")
    log_event(logger, "task_started", job_id=task.job_id, task_id=task.task_id, stage=stage_no,
              task_type=task.task_type, attempt=task.attempts)
    engine_tracing.task_started(task)
    started = time.perf_counter()
    reporter = ProgressReporter(ctx.commits, task, ctx.settings.progress_interval_s)
    outcome = call_handler(ctx, task, reporter)
    task = reporter.task  # its progress writes moved the row on
    status, result = outcome.status, outcome.result if isinstance(outcome, Completed) else None
    error, code = (None, None) if isinstance(outcome, Completed) else (outcome.error, outcome.code)
    error = redact(error) if error else error  # error text is shown to users: no SAS, keys or passwords
    log_event(logger, "task_ended", logging.INFO if status == Status.COMPLETED else logging.WARNING,
              job_id=task.job_id, task_id=task.task_id, stage=stage_no, task_type=task.task_type,
              status=status, attempt=task.attempts, error=error,
              duration_ms=round((time.perf_counter() - started) * 1000))
    engine_tracing.task_ended(task, status, time.perf_counter() - started, error)
    if status == Status.QUEUED:
        _retry_later(ctx, task, error or "transient error")
        return
    engine_faults.point("handler_returned")
    end_task(ctx, task, status, result, error, code, claimer=True)


def call_handler(ctx: EngineContext, task: TaskRecord, reporter: Callable[[float], None] | None = None) -> TaskResult:
    """Run the task's handler once: ``Completed`` (its output as JSON), ``Failed`` (a permanent error), or
    ``Retry`` (a transient one); each error with its machine-readable reason (errors.ErrorCode)."""
    seen = TaskContext(task.job_id, task.task_id, task.stage, task.index, task.attempts, ctx.io, reporter)
    try:
        handler = get_handler(task.task_type)
        params = handler.parameters_model.model_validate(task.parameters)
        return Completed(output_json(handler.run(params, seen)))
    except TransientError as exc:
        return Retry(exc.message, error_code(exc))
    except ValidationError as exc:
        fields = "; ".join(f"{e['field']}: {e['message']}" for e in validation_errors(exc))
        return Failed(f"invalid task parameters: {fields}", ErrorCode.INVALID_PARAMETERS)
    except OrchestratorError as exc:
        return Failed(exc.message, error_code(exc))
    except Exception as exc:  # a handler bug must end the task, not hang the job
        log_event(logger, "task_crashed", logging.ERROR, exc_info=True, job_id=task.job_id,
                  task_id=task.task_id)
        return Failed(f"{type(exc).__name__}: {exc}", ErrorCode.INTERNAL_ERROR)


def _retry_later(ctx: EngineContext, task: TaskRecord, error: str) -> None:
    """After a transient handler error: hand back and queue again with backoff, or give up."""
    released = _release(ctx, task, error)
    if released is None or _cancelled(ctx, released):
        return
    msg = TaskMessage(job_id=task.job_id, task_id=task.task_id, traceparent=engine_tracing.inject())
    if released.attempts >= ctx.max_attempts:
        give_up(ctx, released, msg)
        return
    delay = ctx.retry_delay_s(released.attempts)
    ctx.queues.tasks.send(msg, delay_s=delay)
    log_event(logger, "task_retry_scheduled", job_id=task.job_id, task_id=task.task_id,
              attempt=released.attempts, delay_s=delay, error=error)


def _cancelled(ctx: EngineContext, task: TaskRecord) -> bool:
    """If the task's stage was cancelled and no worker holds the task, mark it cancelled; True then."""
    stage = ctx.store.get_stage(task.job_id, task.stage)
    if stage is None or not stage.cancelled:
        return False
    if task.lease_held(utcnow(), ctx.settings.max_clock_skew_s):
        return False  # its worker finishes it; the cancelled job advances nothing
    cancel_task(ctx, task)
    log_event(logger, "task_cancelled", job_id=task.job_id, task_id=task.task_id, status=task.status)
    return True


def give_up(ctx: EngineContext, task: TaskRecord, msg: TaskMessage) -> None:
    """Out of attempts: move the message to the poison queue, whose function records the failure
    of this attempt (and of no later one: the message names it)."""
    ctx.queues.tasks_poison.send(msg.model_copy(update={"attempt": task.attempts}))
    log_event(logger, "task_poisoned", logging.WARNING, job_id=task.job_id, task_id=task.task_id,
              attempt=task.attempts, error=task.last_error)


def _release(ctx: EngineContext, task: TaskRecord, error: str) -> TaskRecord | None:
    """Hand a claimed task back (queued, with its error); None if someone else moved it meanwhile."""
    def release(t: TaskRecord) -> TaskWrite:
        return TaskWrite("release", t.model_copy(update={
            "status": Status.QUEUED, "last_error": error, "lease_until": None, "progress": None}),
            Change(t.shard, task_id=t.task_id, error=error, attempt=t.attempts, progress=-(t.progress or 0)))

    try:
        return _commit_own(ctx, task, release).written
    except (ConflictError, TransientError):
        return None


def _commit_own(ctx: EngineContext, task: TaskRecord, build: Callable[[TaskRecord], TaskWrite]) -> TaskWrite:
    """Commit ``build(task)``. If the row moved only by this worker's own progress writes (one whose reply
    was lost and whose re-read failed leaves the worker on an old ETag), commit it on the stored row.
    ConflictError when the row is someone else's now (another attempt, a cancel, an end)."""
    try:
        return ctx.commits.write(task.job_id, build(task))
    except ConflictError:
        current = ctx.store.get_task(task.job_id, task.stage, task.index)
        if current is None or current.etag == task.etag or not current.same_claim(task):
            raise ConflictError(f"task {task.task_id} is {current.status if current else 'gone'}, "
                                f"attempt {current.attempts if current else '-'}") from None
        log_event(logger, "task_row_moved_by_own_progress", job_id=task.job_id, task_id=task.task_id,
                  attempt=task.attempts, progress=current.progress)
        return ctx.commits.write(task.job_id, build(current))


def cancel_task(ctx: EngineContext, task: TaskRecord) -> bool:
    """Mark a queued task cancelled (conditional); False if it was claimed meanwhile."""
    try:
        ctx.store.replace_task(task.model_copy(update={"status": Status.CANCELLED, "ended_at": utcnow()}))
        return True
    except ConflictError:
        return False


def end_task(ctx: EngineContext, task: TaskRecord, status: Status, result: Any, error: str | None,
             code: ErrorCode | None = None, claimer: bool = False) -> None:
    """Commit the task's end with its counters (group-committed with other ends of the job); the one
    commit that ends the stage advances it. A superseded end (the row is someone else's now) commits nothing;
    for the worker holding the claim (``claimer``), a row moved only by its own progress writes does not
    (``_commit_own``). ``code``: why it failed (``task_failed`` when a failure gives none)."""
    code = (code or ErrorCode.TASK_FAILED) if status == Status.FAILED else None

    def end(t: TaskRecord) -> TaskWrite:
        return TaskWrite("end", t.model_copy(update={
            "status": status, "result": result, "error_details": error, "error_code": code, "ended_at": utcnow(),
            "lease_until": None, "progress": 100 if status == Status.COMPLETED else t.progress}),
            Change(t.shard, ended=status, task_id=t.task_id, error=error, error_code=code, attempt=t.attempts,
                   progress=-(t.progress or 0)))

    try:
        write = _commit_own(ctx, task, end) if claimer else ctx.commits.write(task.job_id, end(task))
    except ConflictError as exc:
        log_event(logger, "task_end_superseded", job_id=task.job_id, task_id=task.task_id, error=exc.message)
        return
    except EntityTooLargeError as exc:  # this end cannot be stored as it is: end with a fixed-size error
        if error == UNSTORABLE_END:
            raise
        log_event(logger, "task_end_refused", logging.ERROR, job_id=task.job_id, task_id=task.task_id,
                  status=status, error=exc.message[:500])
        end_task(ctx, task, Status.FAILED, None, UNSTORABLE_END, ErrorCode.INTERNAL_ERROR, claimer=claimer)
        return
    if write.finished is not None:
        engine_faults.point("stage_decided")
        engine_complete.advance(ctx, write.finished)


def run_many(ctx: EngineContext, msg: TaskMessage, dequeue_count: int) -> None:
    """A run of neighbouring tasks: their rows read in one query, then each run as its own message would.

    Redelivered (a task of it may have stopped its host, or storage failed), the run is split into one
    message per task, so each is retried, deferred or poisoned alone; a task whose row has ended ignores
    its message. If the engine fails on a task (storage), that task and the rest go on as single
    messages; only if even that fails does the run come back whole, to be split then. No task of a run
    starts after ``RUN_BUDGET_S``: the rest go on as single messages, so a run of slow tasks ends well
    inside ``functionTimeout`` (budget + one task's time limit)."""
    singles = msg.singles()
    if dequeue_count > 1:
        ctx.queues.tasks.send_many(singles)
        log_event(logger, "task_run_split", job_id=msg.job_id, task_id=msg.task_id, count=msg.count,
                  dequeue_count=dequeue_count)
        return
    _, stage_no, first = parse_task_id(msg.task_id)
    rows = {t.index: t for t in ctx.store.task_range(msg.job_id, stage_no, first, first + msg.count - 1)}
    began = time.monotonic()
    for i, single in enumerate(singles):
        if i and time.monotonic() - began > RUN_BUDGET_S:  # slow tasks: the rest go on as single messages
            ctx.queues.tasks.send_many(singles[i:])
            log_event(logger, "task_run_handed_on", job_id=msg.job_id, task_id=single.task_id,
                      left=len(singles) - i, reason=f"the run took over {RUN_BUDGET_S} s")
            return
        try:
            run_one(ctx, single, 1, rows.get(first + i))
        except Exception as exc:
            log_event(logger, "task_run_interrupted", logging.WARNING, job_id=msg.job_id,
                      task_id=single.task_id, left=len(singles) - i, error=str(exc)[:500])
            try:
                ctx.queues.tasks.send_many(singles[i:])
            except Exception:  # noqa: BLE001 - the run comes back after its lease and is split then
                raise exc from None
            return


def gave_up_code(task: TaskRecord) -> ErrorCode:
    """Why a task that ran out of attempts failed: ``timeout`` when its lease kept expiring (or its worker
    kept stopping), ``storage`` when transient storage or network errors did."""
    last = task.last_error or ""
    return ErrorCode.TIMEOUT if not last or LEASE_EXPIRED in last else ErrorCode.STORAGE

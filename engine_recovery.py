"""Recovery: poison-queue handlers and the sweeper that re-drives what a crash left unfinished.

Everything here only re-sends idempotent messages or ends tasks through the engine's own atomic path,
so it is safe to run concurrently with normal traffic and with other sweepers.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import engine_admin
import engine_tracing
from engine_context import EngineContext
from engine_jobs import finish_job, next_message
from engine_tasks import end_task, gave_up_code
from errors import OrchestratorError
from logs import log_event
from models import (
    TERMINAL, CompletionMessage, JobRecord, NotifyMessage, StageMessage, Status, TaskMessage, TaskRecord,
    decode_job_message, decode_task_message, lease_cutoff, parse_task_id, utcnow,
)
from repository_queues import QueueProducer

logger = logging.getLogger(__name__)


POISON_RETRY_DELAY_S = 30


def on_task_poison(ctx: EngineContext, body: str | bytes) -> None:
    """A task message gave up: record the task failed (the stage rules then decide the job).

    Acts only on the attempt that gave up (a poison message left over from before a retry, or one for
    a task a worker holds under a live lease, changes nothing), and never raises: a storage fault puts
    the message back on this queue with a delay, so nothing ends in a queue that no function reads.
    A message the Functions host moved itself names no attempt: it ends the task only when the row shows
    the task out of attempts; a task with attempts left gets a fresh message naming its current attempt
    (if that one is moved here too with the task still at that attempt, its deliveries never reached the
    task: it ends then).
    """
    try:
        msg = decode_task_message(body)
        _, stage, index = parse_task_id(msg.task_id)
    except (ValueError, OrchestratorError):
        log_event(logger, "poison_unreadable", logging.ERROR, queue="tasks", body=str(body)[:2000])
        return
    if msg.count > 1:  # a run whose split kept failing: each task gets its own message and attempts
        try:
            ctx.queues.tasks.send_many(msg.singles())
            log_event(logger, "poison_run_split", job_id=msg.job_id, task_id=msg.task_id, count=msg.count)
        except Exception as exc:  # noqa: BLE001 - the poison path must not poison itself
            _poison_later(ctx.queues.tasks_poison, msg, exc)
        return
    try:
        task = ctx.store.get_task(msg.job_id, stage, index)
        if task is None or task.status in TERMINAL or not _gave_up(ctx, task, msg.attempt):
            log_event(logger, "poison_ignored", job_id=msg.job_id, task_id=msg.task_id,
                      status=task.status if task else None, attempt=msg.attempt)
            return
        if msg.attempt is None and task.attempts < ctx.max_attempts:  # moved by the host, attempts left
            ctx.queues.tasks.send(msg.model_copy(update={"attempt": task.attempts}),
                                          delay_s=ctx.retry_delay_s(task.attempts))
            log_event(logger, "poison_redriven", logging.WARNING, job_id=msg.job_id, task_id=msg.task_id,
                      attempt=task.attempts, max_attempts=ctx.max_attempts)
            return
        reason = task.last_error or "no error was recorded (the worker stopped every time)"
        error = f"gave up after {task.attempts} attempts: {reason}"
        end_task(ctx, task, Status.FAILED, None, error, gave_up_code(task))
        log_event(logger, "task_gave_up", logging.WARNING, job_id=msg.job_id, task_id=msg.task_id,
                  attempt=task.attempts, error=error)
    except Exception as exc:  # noqa: BLE001 - the poison path must not poison itself
        _poison_later(ctx.queues.tasks_poison, msg, exc)


def _gave_up(ctx: EngineContext, task: TaskRecord, attempt: int | None) -> bool:
    """True when a poison message may be about this task's current attempt, and no worker holds it."""
    if task.attempts == 0 or (attempt is not None and attempt != task.attempts):
        return False
    return not task.lease_held(utcnow(), ctx.settings.max_clock_skew_s)


def _poison_later(queue: QueueProducer, msg: TaskMessage | StageMessage | CompletionMessage | NotifyMessage,
                  exc: Exception) -> None:
    """Put a poison message back on its own queue with a delay (the sweeper is the backstop)."""
    job_id = msg.job_id
    try:
        queue.send(msg, delay_s=POISON_RETRY_DELAY_S)
        log_event(logger, "poison_deferred", logging.WARNING, job_id=job_id, error=str(exc)[:500])
    except Exception as again:  # noqa: BLE001
        log_event(logger, "poison_dropped", logging.ERROR, job_id=job_id, error=str(again)[:500],
                  backstop="the sweeper re-drives the job's unfinished tasks")


def on_job_poison(ctx: EngineContext, body: str | bytes) -> None:
    """A stage or completion message gave up: the job is failed, saying which step kept failing."""
    try:
        msg = decode_job_message(body)
    except ValueError:
        log_event(logger, "poison_unreadable", logging.ERROR, queue="jobs", body=str(body)[:2000])
        return
    step = f"stage {msg.stage}" if isinstance(msg, StageMessage) else msg.kind
    error = (f"gave up after {ctx.max_attempts} attempts: the {step} message kept failing "
             f"(see the function logs for job {msg.job_id})")
    try:
        if msg.kind == "notify":
            return  # a webhook chain that broke: the sweeper resends pending webhooks
        if finish_job(ctx, msg.job_id, Status.FAILED, error=error):
            log_event(logger, "job_gave_up", logging.WARNING, job_id=msg.job_id, error=error)
    except Exception as exc:  # noqa: BLE001
        _poison_later(ctx.queues.jobs_poison, msg, exc)


def sweep(ctx: EngineContext, now: datetime | None = None) -> dict[str, int]:
    """Re-drive every active job whose next step looks lost; returns counts of actions taken."""
    now = now or utcnow()
    actions: dict[str, Any] = {}  # action -> count (Any: logged as **fields)
    for job in ctx.store.active_jobs():
        try:
            for action in sweep_job(ctx, job, now):
                actions[action] = actions.get(action, 0) + 1
        except OrchestratorError as exc:  # one broken job must not stop the sweep
            log_event(logger, "sweep_failed", logging.ERROR, job_id=job.job_id, error=exc.message)
    for job in ctx.store.pending_webhooks(now - timedelta(seconds=ctx.settings.sweeper_grace_s)):
        # a delivery chain whose next message was lost: resend its next attempt (claimed once)
        ctx.queues.jobs.send(NotifyMessage(job_id=job.job_id, attempt=job.webhook_attempt + 1,
                                                   traceparent=engine_tracing.carry(job)))
        actions["resent_webhook"] = actions.get("resent_webhook", 0) + 1
    log_event(logger, "sweep_done", **actions)
    return actions


def sweep_job(ctx: EngineContext, job: JobRecord, now: datetime) -> list[str]:
    """The re-drive actions one job needs (already taken when this returns)."""
    grace = timedelta(seconds=ctx.settings.sweeper_grace_s)
    cutoff = now - grace
    if job.reopen_stage is not None:  # a retry a crash interrupted: finished once its own request had the grace
        if job.updated_at >= cutoff:
            return []
        engine_admin.finish_retry(ctx, job)
        return _logged(job, ["finished_retry"])
    rows, shards = ctx.store.stage_rows(job.job_id)  # the one query every pass makes per active job
    stages = {s.stage: s for s in rows}
    send_job = ctx.queues.jobs.send
    done: list[str] = []
    if not stages:
        if job.created_at < cutoff:  # crash between the job row and its first message
            send_job(StageMessage(job_id=job.job_id, stage=1, traceparent=engine_tracing.carry(job)))
            done.append("resent_first_stage")
        return _logged(job, done)
    current = stages[max(stages)]
    if current.status in TERMINAL:
        if current.ended_at is not None and current.ended_at < cutoff:  # an ended stage that never advanced
            message = next_message(job, current.stage, current.status)
            send_job(message)
            done.append("resent_completion" if isinstance(message, CompletionMessage) else "resent_advance")
    elif not current.dispatched:
        # Each chunk marks ``fanout_at`` when it starts (and a paused chain when it looks again). A chunk slower
        # than the grace gets a twin (harmless: duplicate messages, and the cursor lets one chain go on).
        if (current.fanout_at or current.created_at) < cutoff:
            send_job(StageMessage(job_id=job.job_id, stage=current.stage, traceparent=engine_tracing.carry(job)))
            done.append("resent_stage")
    else:
        # Task rows are scanned only when the stage made no progress (no claim or end moved its counters)
        # for a while: a busy stage costs nothing more, however many tasks it has.
        stamps = [r.changed_at for r in (current, *[s for s in shards if s.stage == current.stage]) if r.changed_at]
        last = max(stamps, default=current.fanout_at or current.created_at)
        if last < cutoff:
            stale = ctx.store.stale_tasks(job.job_id, current.stage,
                                             lease_cutoff(cutoff, ctx.settings.max_clock_skew_s))
            queued_cutoff = cutoff - timedelta(seconds=ctx.settings.retry_max_delay_s)
            if last < queued_cutoff:  # nothing moved for longer than any retry delay: a message may be lost
                stale += ctx.store.stale_queued_tasks(job.job_id, current.stage, queued_cutoff)
            carried = engine_tracing.carry(job)
            ctx.queues.tasks.send_many([TaskMessage(job_id=job.job_id, task_id=t.task_id, traceparent=carried)
                                                for t in stale])
            done.extend("resent_stale_task" for _ in stale)
    return _logged(job, done)


def _logged(job: JobRecord, done: list[str]) -> list[str]:
    if done:
        log_event(logger, "sweeper_redrive", job_id=job.job_id, actions=done[:10], count=len(done))
    return done


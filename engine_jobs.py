"""The job lifecycle the engine owns: submit, the one rule for what follows a stage, the bounded
compare-and-set on job rows (never backwards), moving a job forward to a stage and finishing it (with its
webhook), and job look-ups (a missing job is said here, once)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import engine_faults
import engine_tracing
from base_controller import JobController, TaskHandler, TaskOutcome
from controller_factory import JOB_TYPES, get_controller, get_handler
from engine_context import EngineContext
from errors import BadRequestError, ConflictError, NotFoundError, OrchestratorError, TransientError, echo
from logs import log_event
from models import (
    TERMINAL, CompletionMessage, JobRecord, NotifyMessage, StageMessage, Status, check_transition, is_job_id,
    make_job_id, utcnow,
)
from repositories import JobStore
from repository_webhook_rules import check_url

logger = logging.getLogger(__name__)
MAX_CAS_ATTEMPTS = 50


def job_types() -> Mapping[str, JobController[Any]]:
    """Every registered job type (read-only view of the registry)."""
    return MappingProxyType(JOB_TYPES)


def handler(task_type: str) -> TaskHandler[Any]:
    """A registered task type (version, time limit); UnknownNameError listing the known ones otherwise."""
    return get_handler(task_type)


def require_job(store: JobStore, job_id: str) -> JobRecord:
    """The job row; NotFoundError naming the id otherwise."""
    job = store.get_job(job_id) if is_job_id(job_id) else None
    if job is None:
        raise NotFoundError(f"no job with id {echo(job_id)}")
    return job


def update_job(store: JobStore, job_id: str, change: Callable[[JobRecord], JobRecord | None],
               job: JobRecord | None = None) -> JobRecord | None:
    """Bounded compare-and-set on a job row: read (or start from ``job``), ``change`` it, write If-Match.

    ``change`` returns the new row, or None to leave the row as it is (then None is returned). A lost
    reply to our own write is recognised by the store (write ids), so a repeat never applies twice.
    """
    for _ in range(MAX_CAS_ATTEMPTS):
        current = job if job is not None else store.get_job(job_id)
        job = None
        if current is None:
            return None
        wanted = change(current)
        if wanted is None:
            return None
        try:
            return store.replace_job(wanted)
        except ConflictError:
            continue
    raise TransientError(f"job {job_id}: its row kept changing under {MAX_CAS_ATTEMPTS} writes")


def next_message(job: JobRecord, stage: int, stage_status: Status) -> StageMessage | CompletionMessage:
    """What follows stage ``stage`` that ended ``stage_status``: the next stage, or completion."""
    if stage_status == Status.FAILED or stage >= job.total_stages:
        return CompletionMessage(job_id=job.job_id, traceparent=engine_tracing.carry(job))
    return StageMessage(job_id=job.job_id, stage=stage + 1, traceparent=engine_tracing.carry(job))


def moves_forward(job: JobRecord, stage: int) -> bool:
    """True when bringing ``job`` to ``stage`` (processing) keeps it moving forward."""
    return job.status not in TERMINAL and (job.stage, job.status) != (stage, Status.PROCESSING) and (
        stage > job.stage or (stage == job.stage and job.status == Status.QUEUED))


@dataclass(frozen=True)
class Submitted:
    """A submit's answer: the job, and whether this call created it."""

    job: JobRecord
    created: bool


def submit(ctx: EngineContext, job_type: str, body: dict[str, Any], callback_url: str | None = None) -> Submitted:
    """Validate ``body`` as ``job_type``'s parameters, then create the job once and start it."""
    controller = get_controller(job_type)
    params = controller.validate(body, ctx.settings)
    if callback_url:  # refused here, before the job exists: an unreachable target never gets a job
        check_url(callback_url, ctx.settings.webhook_allow_loopback)
        if not ctx.settings.webhook_secret.get_secret_value():
            raise BadRequestError("callback_url needs webhooks configured: set WEBHOOK_SECRET on the Function App")
    return create(ctx.store, ctx.queues.jobs.send, controller, params.model_dump(mode="json"), callback_url,
                  ctx.shards_per_stage)


def create(store: JobStore, send_stage: Callable[[StageMessage], Any], controller: JobController[Any],
           parameters: dict[str, Any], callback_url: str | None, counter_shards: int) -> Submitted:
    """Create the job (once per identity) and send its first stage message.

    A lost reply to the create is recognised (write id), so the first caller still gets ``created``
    and the first message is sent; a crash before the send is the sweeper's to re-drive.
    """
    job_id = make_job_id(controller.job_type, parameters)
    engine_tracing.annotate(job_id=job_id, job_type=controller.job_type)
    job = store.get_job(job_id)
    if job is not None:
        return Submitted(job, False)
    job = store.create_job(JobRecord(job_id=job_id, job_type=controller.job_type,
                                     total_stages=controller.total_stages, stage_name=controller.stage(1).name,
                                     parameters=parameters, callback_url=callback_url or None,
                                     counter_shards=counter_shards, traceparent=engine_tracing.inject()))
    if job is None:
        existing = store.get_job(job_id)
        if existing is None:  # created by a concurrent identical request and not readable yet
            raise TransientError(f"job {job_id} could not be read back; retry")
        return Submitted(existing, False)
    store.index_job(job)
    engine_faults.point("job_row_written")
    send_stage(StageMessage(job_id=job_id, stage=1, traceparent=job.traceparent))
    log_event(logger, "job_submitted", job_id=job_id, job_type=controller.job_type)
    return Submitted(job, True)


def outcomes(store: JobStore, job_id: str, stage: int | None = None) -> list[TaskOutcome]:
    """Outcomes of a job's tasks (or one stage's), in stage then index order."""
    return [TaskOutcome(task_id=t.task_id, stage=t.stage, index=t.index, status=t.status,
                        result=t.result, error_details=t.error_details)
            for t in store.list_tasks(job_id, stage)]


def finish_job(ctx: EngineContext, job_id: str, status: Status, result: Any = None, error: str | None = None) -> bool:
    """Move a job to a terminal status (conditional); False if it already was terminal."""
    def finish(job: JobRecord) -> JobRecord | None:
        if job.status in TERMINAL:
            return None
        check_transition(job.status, status)
        return job.model_copy(update={"status": status, "result_data": result, "error_details": error,
                                      "updated_at": utcnow(), **job.webhook_fields()})

    written = update_job(ctx.store, job_id, finish)
    if written is None:
        return False
    log_event(logger, "job_finished", job_id=job_id, status=status, error=error)
    engine_tracing.annotate(job_status=status)
    notify(ctx, written)
    return True


def notify(ctx: EngineContext, job: JobRecord) -> None:
    """Queue the webhook delivery of a job that just ended (the sweeper re-sends a lost one)."""
    if job.callback_url:
        ctx.queues.jobs.send(NotifyMessage(job_id=job.job_id, traceparent=engine_tracing.carry(job)))


def move_job(store: JobStore, job: JobRecord, stage: int, stage_name: str) -> bool:
    """Bring the job row forward to ``stage`` / processing; False if the job is terminal or already
    past ``stage`` (a delayed duplicate stage message never moves a job backwards)."""
    seen: list[JobRecord] = []

    def move(current: JobRecord) -> JobRecord | None:
        seen.append(current)
        if not moves_forward(current, stage):
            return None
        if current.status != Status.PROCESSING:
            check_transition(current.status, Status.PROCESSING)
        return current.model_copy(update={"stage": stage, "stage_name": stage_name,
                                          "status": Status.PROCESSING, "updated_at": utcnow()})

    if update_job(store, job.job_id, move, job=job) is not None:
        return True
    last = seen[-1] if seen else None
    return last is not None and (last.stage, last.status) == (stage, Status.PROCESSING)


def describe(exc: Exception) -> str:
    """An exception as a user reads it: our own message, or its type and text."""
    return exc.message if isinstance(exc, OrchestratorError) else f"{type(exc).__name__}: {exc}"

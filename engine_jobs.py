"""The job lifecycle the engine owns: submit, the one rule for what follows a stage, the bounded
compare-and-set on job rows (never backwards), and job look-ups (a missing job is said here, once)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import engine_faults
import engine_tracing
from base_controller import JobController, TaskHandler
from controller_factory import JOB_TYPES, get_handler
from errors import ConflictError, NotFoundError, TransientError, echo
from logs import log_event
from models import TERMINAL, CompletionMessage, JobRecord, StageMessage, Status, is_job_id, make_job_id
from repositories import JobStore

logger = logging.getLogger(__name__)
MAX_CAS_ATTEMPTS = 50


def job_types() -> Mapping[str, JobController]:
    """Every registered job type (read-only view of the registry)."""
    return MappingProxyType(JOB_TYPES)


def handler(task_type: str) -> TaskHandler:
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


def submit(store: JobStore, send_stage: Callable[[StageMessage], Any], controller: JobController,
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

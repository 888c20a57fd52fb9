"""The engine: run a stage, run a task, decide atomically who ended a stage, advance, complete.

Exactly-once advance: a task's end is one entity-group transaction over its task row, its counter
shard and (when that shard reaches zero) the stage row, each If-Match. Only one transaction can take
the stage's ``shards_remaining`` to zero; its writer (``finisher``) sends the one advance message. A
duplicate delivery cannot commit (its task ETag is stale) and re-reads to learn what happened.
Every handler below is safe to repeat: a redelivered message finds the rows it would write.
Completion is in ``engine_complete.py``; recovery (poison, sweeper) in ``engine_recovery.py``; retry and cancel
in ``engine_admin.py``.
"""
from __future__ import annotations

import logging
import math
import random
import time
from datetime import timedelta
from typing import Any, Callable

from pydantic import ValidationError

import engine_complete
import engine_fanout
import engine_faults
import engine_jobs
import engine_runs
import engine_tracing
from base_controller import Completed, Failed, JobController, Retry, TaskContext, TaskOutcome, TaskResult, output_json
from config import Settings, max_dequeue_count
from controller_factory import TASK_HANDLERS, get_controller, get_handler
from controller_geo_common import STAC_EXTENTS
from engine_counters import Change
from engine_group_commit import GroupCommit, ProgressReporter, TaskWrite
from engine_task_io import StorageTaskIO
from errors import (
    BadRequestError, ConflictError, EntityTooLargeError, ErrorCode, JobCancelledError, OrchestratorError,
    TransientError, error_code, validation_errors,
)
from logs import log_context, log_event, redact
from models import (
    TERMINAL, CompletionMessage, JobRecord, NotifyMessage, StageMessage, StageRecord, Status, TaskMessage,
    TaskRecord, check_transition, parse_task_id, utcnow,
)
from repositories import Repositories
from repository_webhook_rules import check_url

logger = logging.getLogger(__name__)
MAX_QUEUE_DELAY_S = 7 * 24 * 3600 - 60
LEASE_EXPIRED = "did not finish within"  # in last_error when an attempt overran its lease (gave_up_code)
UNSTORABLE_END = "the task's end could not be stored (over Azure Table Storage's limits); see the function logs"


class Engine:
    """Jobs -> stages -> tasks on tables and queues."""

    def __init__(self, repos: Repositories, max_attempts: int | None = None) -> None:
        self.repos = repos
        self.store = repos.store
        self.settings = repos.settings
        self.shards_per_stage = repos.settings.counter_shards
        self.max_attempts = max_attempts or max_dequeue_count()
        self.io = StorageTaskIO(repos.settings, repos.rasters, STAC_EXTENTS)
        self.io.results_reader = lambda job_id, stage, first, last: [
            t.result for t in self.store.task_range(job_id, stage, first, last) if t.status == Status.COMPLETED]
        self.commits = GroupCommit(repos.store)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Engine":
        """An engine over the storage ``settings`` name (tables, queues, containers created once)."""
        repos = Repositories(settings).ensure()
        engine_tracing.setup(settings, repos)  # once per process; nothing at all unless configured
        return cls(repos)

    @staticmethod
    def controller(job_type: str) -> JobController:
        """The controller of a job type; UnknownNameError listing the known ones otherwise."""
        return get_controller(job_type)

    @engine_tracing.traced("job.submit")
    def submit(self, job_type: str, body: dict[str, Any], callback_url: str | None = None) -> engine_jobs.Submitted:
        """Validate ``body`` as ``job_type``'s parameters, then create the job once and start it."""
        controller = get_controller(job_type)
        params = controller.validate(body, self.settings)
        if callback_url:  # refused here, before the job exists: an unreachable target never gets a job
            check_url(callback_url, self.settings.webhook_allow_loopback)
            if not self.settings.webhook_secret.get_secret_value():
                raise BadRequestError("callback_url needs webhooks configured: set WEBHOOK_SECRET on the Function App")
        return engine_jobs.submit(self.store, self.repos.jobs_queue.send, controller, params.model_dump(mode="json"),
                                  callback_url, self.shards_per_stage)

    # ------------------------------------------------------------------ stage fan-out
    @engine_tracing.consumer("stage.run")
    def run_stage(self, msg: StageMessage) -> None:
        """Write stage ``msg.stage``'s rows (once), mark the job, queue the task messages."""
        job = self.store.get_job(msg.job_id)
        if job is None or job.status in TERMINAL or msg.stage < job.stage:
            log_event(logger, "stage_message_ignored", job_id=msg.job_id, stage=msg.stage,
                      reason="unknown job" if job is None else f"job is {job.status} at stage {job.stage}")
            return
        controller = get_controller(job.job_type)
        if msg.stage > controller.total_stages or not self._previous_stage_ended(job, msg.stage):
            log_event(logger, "stage_message_ignored", logging.WARNING, job_id=job.job_id, stage=msg.stage,
                      reason="stage out of range or previous stage not ended")
            return
        stage = self.store.get_stage(job.job_id, msg.stage)
        if stage is not None and stage.dispatched:
            log_event(logger, "stage_already_dispatched", job_id=job.job_id, stage=msg.stage)
            return
        if stage is not None and msg.from_task is not None and msg.from_task != stage.fanned_out:
            log_event(logger, "stage_chunk_ignored", job_id=job.job_id, stage=msg.stage, from_task=msg.from_task,
                      fanned_out=stage.fanned_out)
            return
        if stage is None or not stage.plan_stored:  # deterministic: planning again gives the same tasks
            planned = engine_fanout.plan(self, job, controller, msg.stage)
            if planned is None:
                return
            if stage is None:
                stage, planned = engine_fanout.new_stage(self, job, controller, msg.stage, planned)
        else:
            planned = engine_fanout.stored_plan(self, stage)
        engine_faults.point("stage_rows_written")
        if not self._move_job(job, stage=msg.stage, stage_name=stage.name):
            return
        engine_fanout.fan_out_chunk(self, job, stage, planned)

    def _previous_stage_ended(self, job: JobRecord, number: int) -> bool:
        if number == 1:
            return True
        previous = self.store.get_stage(job.job_id, number - 1)
        return previous is not None and previous.status == Status.COMPLETED

    # ------------------------------------------------------------------ one task
    def run_task(self, msg: TaskMessage, dequeue_count: int = 1) -> None:
        """Run one task once: claim it (lease), call its handler, record the outcome, advance if last.
        A message naming a run of tasks runs them in order (``engine_runs``)."""
        if msg.count > 1:
            engine_runs.run_many(self, msg, dequeue_count)
            return
        self.run_one(msg, dequeue_count)

    @engine_tracing.consumer("task.run")
    def run_one(self, msg: TaskMessage, dequeue_count: int, row: TaskRecord | None | bool = False) -> None:
        """One task; ``row``: its row as a run read it (False: read it here)."""
        _, stage_no, index = parse_task_id(msg.task_id)
        with log_context(job_id=msg.job_id, task_id=msg.task_id):
            task = self.commits.read(msg.job_id, stage_no, index) if row is False else row
            if task is not None:
                handler = TASK_HANDLERS.get(task.task_type)
                with log_context(task_type=task.task_type, task_version=handler.version if handler else None):
                    self._run_task(msg, task, stage_no, dequeue_count)
                return
            self._run_task(msg, task, stage_no, dequeue_count)

    def _run_task(self, msg: TaskMessage, task: TaskRecord | None, stage_no: int, dequeue_count: int) -> None:
        ids = {"job_id": msg.job_id, "task_id": msg.task_id, "dequeue_count": dequeue_count}
        if task is None or task.status in TERMINAL:  # includes tasks a cancel has flipped
            log_event(logger, "task_message_ignored", status=task.status if task else None, **ids)
            return
        if task.attempts > 0 and self._cancelled(task):  # a retry or a takeover: honour a cancel first
            return
        now, skew = utcnow(), self.settings.max_clock_skew_s
        if task.status == Status.PROCESSING:
            if task.lease_held(now, skew):  # live, or might be by its claimer's clock
                delay = math.ceil((task.lease_until - now).total_seconds() + skew) + 1
                self.repos.tasks_queue.send(msg, delay_s=min(delay, MAX_QUEUE_DELAY_S))
                log_event(logger, "task_busy_deferred", delay_s=delay, **ids)
                return
            task.last_error = (f"attempt {task.attempts} {LEASE_EXPIRED} its {task.time_limit_s}s "
                               f"lease (worker stopped or overran)")
        if task.attempts >= self.max_attempts:
            self.give_up(task, msg)
            return
        handler = get_handler(task.task_type)
        limit = handler.time_limit_s or self.settings.task_time_limit_s
        claim = task.model_copy(update={
            "status": Status.PROCESSING, "attempts": task.attempts + 1, "started_at": now, "progress": None,
            "task_version": handler.version, "time_limit_s": limit, "lease_until": now + timedelta(seconds=limit)})
        change = Change(task.shard, started=int(task.attempts == 0), retried=int(task.attempts > 0),
                        progress=-(task.progress or 0))
        try:
            task = self.commits.write(task.job_id, TaskWrite("claim", claim, change)).written
        except JobCancelledError:  # the job was cancelled before this claim could land: the task never starts
            self.cancel_task(task)
            log_event(logger, "task_cancelled", status=task.status, **ids)
            return
        except ConflictError:
            log_event(logger, "task_claimed_elsewhere", **ids)
            return
        try:
            self._run_claimed(task, stage_no)
        except TransientError as exc:  # storage trouble in the engine: hand the task back, let the host retry
            self._release(task, str(exc))
            raise

    def _run_claimed(self, task: TaskRecord, stage_no: int) -> None:
        engine_faults.point("task_claimed")
        log_event(logger, "task_started", job_id=task.job_id, task_id=task.task_id, stage=stage_no,
                  task_type=task.task_type, attempt=task.attempts)
        engine_tracing.task_started(task)
        started = time.perf_counter()
        reporter = ProgressReporter(self.commits, task, self.settings.progress_interval_s)
        outcome = self._call_handler(task, reporter)
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
            self._retry_later(task, error or "transient error")
            return
        engine_faults.point("handler_returned")
        self.end_task(task, status, result, error, code, claimer=True)

    def _call_handler(self, task: TaskRecord, reporter: Callable[[float], None] | None = None) -> TaskResult:
        """Run the task's handler once: ``Completed`` (its output as JSON), ``Failed`` (a permanent error), or
        ``Retry`` (a transient one); each error with its machine-readable reason (errors.ErrorCode)."""
        ctx = TaskContext(task.job_id, task.task_id, task.stage, task.index, task.attempts, self.io, reporter)
        try:
            handler = get_handler(task.task_type)
            params = handler.parameters_model.model_validate(task.parameters)
            return Completed(output_json(handler.run(params, ctx)))
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

    def retry_cap_s(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1`` without jitter: base * 2^(attempt-1), capped."""
        return min(self.settings.retry_base_delay_s * 2 ** max(0, attempt - 1), self.settings.retry_max_delay_s)

    def retry_delay_s(self, attempt: int) -> int:
        """Backoff before attempt ``attempt + 1``, with +-20% jitter."""
        return max(0, round(self.retry_cap_s(attempt) * random.uniform(0.8, 1.2)))

    def _retry_later(self, task: TaskRecord, error: str) -> None:
        """After a transient handler error: hand back and queue again with backoff, or give up."""
        released = self._release(task, error)
        if released is None or self._cancelled(released):
            return
        msg = TaskMessage(job_id=task.job_id, task_id=task.task_id, traceparent=engine_tracing.inject())
        if released.attempts >= self.max_attempts:
            self.give_up(released, msg)
            return
        delay = self.retry_delay_s(released.attempts)
        self.repos.tasks_queue.send(msg, delay_s=delay)
        log_event(logger, "task_retry_scheduled", job_id=task.job_id, task_id=task.task_id,
                  attempt=released.attempts, delay_s=delay, error=error)

    def _cancelled(self, task: TaskRecord) -> bool:
        """If the task's stage was cancelled and no worker holds the task, mark it cancelled; True then."""
        stage = self.store.get_stage(task.job_id, task.stage)
        if stage is None or not stage.cancelled:
            return False
        if task.lease_held(utcnow(), self.settings.max_clock_skew_s):
            return False  # its worker finishes it; the cancelled job advances nothing
        self.cancel_task(task)
        log_event(logger, "task_cancelled", job_id=task.job_id, task_id=task.task_id, status=task.status)
        return True

    def give_up(self, task: TaskRecord, msg: TaskMessage) -> None:
        """Out of attempts: move the message to the poison queue, whose function records the failure
        of this attempt (and of no later one: the message names it)."""
        self.repos.tasks_poison.send(msg.model_copy(update={"attempt": task.attempts}))
        log_event(logger, "task_poisoned", logging.WARNING, job_id=task.job_id, task_id=task.task_id,
                  attempt=task.attempts, error=task.last_error)

    def _release(self, task: TaskRecord, error: str) -> TaskRecord | None:
        """Hand a claimed task back (queued, with its error); None if someone else moved it meanwhile."""
        def release(t: TaskRecord) -> TaskWrite:
            return TaskWrite("release", t.model_copy(update={
                "status": Status.QUEUED, "last_error": error, "lease_until": None, "progress": None}),
                Change(t.shard, task_id=t.task_id, error=error, attempt=t.attempts, progress=-(t.progress or 0)))

        try:
            return self._commit_own(task, release).written
        except (ConflictError, TransientError):
            return None

    def _commit_own(self, task: TaskRecord, build: Callable[[TaskRecord], TaskWrite]) -> TaskWrite:
        """Commit ``build(task)``. If the row moved only by this worker's own progress writes (one whose reply
        was lost and whose re-read failed leaves the worker on an old ETag), commit it on the stored row.
        ConflictError when the row is someone else's now (another attempt, a cancel, an end)."""
        try:
            return self.commits.write(task.job_id, build(task))
        except ConflictError:
            current = self.store.get_task(task.job_id, task.stage, task.index)
            if current is None or current.etag == task.etag or not current.same_claim(task):
                raise ConflictError(f"task {task.task_id} is {current.status if current else 'gone'}, "
                                    f"attempt {current.attempts if current else '-'}") from None
            log_event(logger, "task_row_moved_by_own_progress", job_id=task.job_id, task_id=task.task_id,
                      attempt=task.attempts, progress=current.progress)
            return self.commits.write(task.job_id, build(current))

    def cancel_task(self, task: TaskRecord) -> bool:
        """Mark a queued task cancelled (conditional); False if it was claimed meanwhile."""
        try:
            self.store.replace_task(task.model_copy(update={"status": Status.CANCELLED, "ended_at": utcnow()}))
            return True
        except ConflictError:
            return False

    def end_task(self, task: TaskRecord, status: Status, result: Any, error: str | None,
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
            write = self._commit_own(task, end) if claimer else self.commits.write(task.job_id, end(task))
        except ConflictError as exc:
            log_event(logger, "task_end_superseded", job_id=task.job_id, task_id=task.task_id, error=exc.message)
            return
        except EntityTooLargeError as exc:  # this end cannot be stored as it is: end with a fixed-size error
            if error == UNSTORABLE_END:
                raise
            log_event(logger, "task_end_refused", logging.ERROR, job_id=task.job_id, task_id=task.task_id,
                      status=status, error=exc.message[:500])
            self.end_task(task, Status.FAILED, None, UNSTORABLE_END, ErrorCode.INTERNAL_ERROR, claimer=claimer)
            return
        if write.finished is not None:
            engine_faults.point("stage_decided")
            self.advance(write.finished)

    # ------------------------------------------------------------------ advance and complete
    @engine_tracing.traced("stage.end")
    def advance(self, stage: StageRecord) -> None:
        """Send the one message that follows an ended stage: next stage, or completion."""
        job = self.store.get_job(stage.job_id)
        if job is None or job.status in TERMINAL:
            return
        message = engine_jobs.next_message(job, stage.stage, stage.status)
        self.repos.jobs_queue.send(message)
        nxt = "completion" if isinstance(message, CompletionMessage) else f"stage {message.stage}"
        engine_faults.point("advance_message_sent")
        self.store.mark_stage(job.job_id, stage.stage, advance_sent=True)
        log_event(logger, "stage_advanced", job_id=job.job_id, stage=stage.stage, status=stage.status,
                  next=nxt, finisher=stage.finisher)
        engine_tracing.annotate(stage_status=stage.status, stage_next=nxt)

    @engine_tracing.consumer("job.complete")
    def complete(self, msg: CompletionMessage) -> None:
        """Write the job's final status: failed (naming the failed tasks) or completed with result_data."""
        engine_complete.complete(self, msg)

    def outcomes(self, job_id: str, stage: int | None = None) -> list[TaskOutcome]:
        """Outcomes of a job's tasks (or one stage's), in stage then index order."""
        return [TaskOutcome(task_id=t.task_id, stage=t.stage, index=t.index, status=t.status,
                            result=t.result, error_details=t.error_details)
                for t in self.store.list_tasks(job_id, stage)]

    def finish_job(self, job_id: str, status: Status, result: Any = None, error: str | None = None) -> bool:
        """Move a job to a terminal status (conditional); False if it already was terminal."""
        def finish(job: JobRecord) -> JobRecord | None:
            if job.status in TERMINAL:
                return None
            check_transition(job.status, status)
            return job.model_copy(update={"status": status, "result_data": result, "error_details": error,
                                          "updated_at": utcnow(), **job.webhook_fields()})

        written = engine_jobs.update_job(self.store, job_id, finish)
        if written is None:
            return False
        log_event(logger, "job_finished", job_id=job_id, status=status, error=error)
        engine_tracing.annotate(job_status=status)
        self.notify(written)
        return True

    def notify(self, job: JobRecord) -> None:
        """Queue the webhook delivery of a job that just ended (the sweeper re-sends a lost one)."""
        if job.callback_url:
            self.repos.jobs_queue.send(NotifyMessage(job_id=job.job_id, traceparent=engine_tracing.carry(job)))

    def _move_job(self, job: JobRecord, stage: int, stage_name: str) -> bool:
        """Bring the job row forward to ``stage`` / processing; False if the job is terminal or already
        past ``stage`` (a delayed duplicate stage message never moves a job backwards)."""
        seen: list[JobRecord] = []

        def move(current: JobRecord) -> JobRecord | None:
            seen.append(current)
            if not engine_jobs.moves_forward(current, stage):
                return None
            if current.status != Status.PROCESSING:
                check_transition(current.status, Status.PROCESSING)
            return current.model_copy(update={"stage": stage, "stage_name": stage_name,
                                              "status": Status.PROCESSING, "updated_at": utcnow()})

        if engine_jobs.update_job(self.store, job.job_id, move, job=job) is not None:
            return True
        last = seen[-1] if seen else None
        return last is not None and (last.stage, last.status) == (stage, Status.PROCESSING)


def gave_up_code(task: TaskRecord) -> ErrorCode:
    """Why a task that ran out of attempts failed: ``timeout`` when its lease kept expiring (or its worker
    kept stopping), ``storage`` when transient storage or network errors did."""
    last = task.last_error or ""
    return ErrorCode.TIMEOUT if not last or LEASE_EXPIRED in last else ErrorCode.STORAGE

"""The engine: run a stage, run a task, decide atomically who ended a stage, advance, complete.

Exactly-once advance: a task's end is one entity-group transaction over its task row, its counter
shard and (when that shard reaches zero) the stage row, each If-Match. Only one transaction can take
the stage's ``shards_remaining`` to zero; its writer (``finisher``) sends the one advance message. A
duplicate delivery cannot commit (its task ETag is stale) and re-reads to learn what happened.
Every handler below is safe to repeat: a redelivered message finds the rows it would write.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from typing import Any

from pydantic import ValidationError

from base_controller import TaskContext, TaskOutcome, validation_errors
from controller_factory import get_controller, get_handler
from errors import ConflictError, OrchestratorError, TransientError
from logs import log_event
from models import (
    TERMINAL, CompletionMessage, JobRecord, ShardRecord, StageMessage, StageRecord, Status, TaskMessage,
    TaskRecord, check_transition, make_task_id, parse_task_id, utcnow,
)
from repositories import Repositories

logger = logging.getLogger(__name__)
MAX_COMMIT_ATTEMPTS = 200
MAX_ERROR_TASKS_LISTED = 20


class Engine:
    """Jobs -> stages -> tasks on tables and queues."""

    def __init__(self, repos: Repositories) -> None:
        self.repos = repos
        self.store = repos.store
        self.shards_per_stage = repos.settings.counter_shards

    # ------------------------------------------------------------------ stage fan-out
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
        if stage is None:
            stage = self._create_stage(job, msg.stage)
            if stage is None:
                return
        self._move_job(job, stage=msg.stage, stage_name=stage.name, status=Status.PROCESSING)
        started = time.perf_counter()
        self.repos.tasks_queue.send_many([
            TaskMessage(job_id=job.job_id, task_id=make_task_id(job.job_id, msg.stage, i))
            for i in range(stage.total)])
        self.store.mark_stage(job.job_id, msg.stage, dispatched=True)
        log_event(logger, "stage_dispatched", job_id=job.job_id, stage=msg.stage, tasks=stage.total,
                  send_ms=round((time.perf_counter() - started) * 1000))

    def _previous_stage_ended(self, job: JobRecord, number: int) -> bool:
        if number == 1:
            return True
        previous = self.store.get_stage(job.job_id, number - 1)
        return previous is not None and previous.status == Status.COMPLETED

    def _create_stage(self, job: JobRecord, number: int) -> StageRecord | None:
        controller = get_controller(job.job_type)
        definition = controller.stage(number)
        previous = self.outcomes(job.job_id, number - 1) if number > 1 else []
        try:
            params = controller.parameters_model.model_validate(job.parameters)
            planned = controller.plan_stage(number, params, previous)
            if not planned:
                raise ValueError(f"stage {number} ({definition.name}) has no tasks to run")
        except (ValueError, OrchestratorError) as exc:
            self._finish_job(job.job_id, Status.FAILED, error=f"planning stage {number} failed: {exc}")
            return None
        shards = min(self.shards_per_stage, len(planned))
        tasks = [TaskRecord(job_id=job.job_id, task_id=make_task_id(job.job_id, number, i), stage=number,
                            index=i, shard=i % shards, task_type=definition.task_type, parameters=p)
                 for i, p in enumerate(planned)]
        shard_rows = [ShardRecord(job_id=job.job_id, stage=number, shard=s,
                                  total=len(range(s, len(planned), shards)),
                                  remaining=len(range(s, len(planned), shards))) for s in range(shards)]
        stage = StageRecord(job_id=job.job_id, stage=number, name=definition.name,
                            task_type=definition.task_type, total=len(planned), shards=shards,
                            shards_remaining=shards)
        self.store.create_stage(stage, shard_rows, tasks)
        return stage

    # ------------------------------------------------------------------ one task
    def run_task(self, msg: TaskMessage, dequeue_count: int = 1) -> None:
        """Run one task once: claim it, call its handler, record the outcome, advance if last."""
        _, stage, index = parse_task_id(msg.task_id)
        task = self.store.get_task(msg.job_id, stage, index)
        if task is None or task.status != Status.QUEUED:
            log_event(logger, "task_message_ignored", job_id=msg.job_id, task_id=msg.task_id,
                      status=task.status if task else None, dequeue_count=dequeue_count)
            return
        try:
            task = self.store.replace_task(task.model_copy(update={
                "status": Status.PROCESSING, "attempts": task.attempts + 1, "started_at": utcnow()}))
        except ConflictError:
            log_event(logger, "task_claimed_elsewhere", job_id=msg.job_id, task_id=msg.task_id)
            return
        log_event(logger, "task_started", job_id=task.job_id, task_id=task.task_id, stage=stage,
                  task_type=task.task_type, attempt=task.attempts)
        started = time.perf_counter()
        status, result, error = self._call_handler(task)
        log_event(logger, "task_ended", logging.INFO if status == Status.COMPLETED else logging.WARNING,
                  job_id=task.job_id, task_id=task.task_id, stage=stage, task_type=task.task_type,
                  status=status, attempt=task.attempts, error=error,
                  duration_ms=round((time.perf_counter() - started) * 1000))
        self.end_task(task, status, result, error)

    def _call_handler(self, task: TaskRecord) -> tuple[Status, Any, str | None]:
        ctx = TaskContext(task.job_id, task.task_id, task.stage, task.index, task.attempts)
        try:
            handler = get_handler(task.task_type)
            params = handler.parameters_model.model_validate(task.parameters)
            result = handler.run(params, ctx)
            if hasattr(result, "model_dump"):
                result = result.model_dump(mode="json")
            return Status.COMPLETED, result, None
        except TransientError:
            self._release(task)
            raise
        except ValidationError as exc:
            fields = "; ".join(f"{e['field']}: {e['message']}" for e in validation_errors(exc))
            return Status.FAILED, None, f"invalid task parameters: {fields}"
        except OrchestratorError as exc:
            return Status.FAILED, None, exc.message
        except Exception as exc:  # a handler bug must end the task, not hang the job
            log_event(logger, "task_crashed", logging.ERROR, exc_info=True, job_id=task.job_id,
                      task_id=task.task_id)
            return Status.FAILED, None, f"{type(exc).__name__}: {exc}"

    def _release(self, task: TaskRecord) -> None:
        """Hand a task back to the queue after a transient error (the message will be redelivered)."""
        try:
            self.store.replace_task(task.model_copy(update={"status": Status.QUEUED}))
        except ConflictError:
            pass

    def end_task(self, task: TaskRecord, status: Status, result: Any, error: str | None) -> None:
        """Commit the task's end with its counters; the one commit that ends the stage advances it."""
        token = uuid.uuid4().hex
        ended = task.model_copy(update={"status": status, "result": result, "error_details": error,
                                        "ended_at": utcnow(), "end_token": token})
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            stage, shard = self.store.counters(task.job_id, task.stage, task.shard)
            shard_after, stage_after = _count_end(shard, stage, status, token)
            try:
                self.store.commit_task_end(ended, shard_after, stage_after)
                finished_stage = stage_after if stage_after and stage_after.status in TERMINAL else None
                break
            except ConflictError:
                current = self.store.get_task(task.job_id, task.stage, task.index)
                if current is not None and current.status in TERMINAL:
                    if current.end_token != token:
                        log_event(logger, "task_end_duplicate", job_id=task.job_id, task_id=task.task_id)
                        return
                    stage = self.store.get_stage(task.job_id, task.stage)  # our commit landed; reply lost
                    finished_stage = stage if stage is not None and stage.finisher == token else None
                    break
                time.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
        else:
            raise TransientError(f"task {task.task_id}: counters stayed contended for {MAX_COMMIT_ATTEMPTS} tries")
        if finished_stage is not None:
            self.advance(finished_stage)

    # ------------------------------------------------------------------ advance and complete
    def advance(self, stage: StageRecord) -> None:
        """Send the one message that follows an ended stage: next stage, or completion."""
        job = self.store.get_job(stage.job_id)
        if job is None or job.status in TERMINAL:
            return
        controller = get_controller(job.job_type)
        if stage.status == Status.FAILED or stage.stage >= controller.total_stages:
            self.repos.jobs_queue.send(CompletionMessage(job_id=job.job_id))
            nxt = "completion"
        else:
            self.repos.jobs_queue.send(StageMessage(job_id=job.job_id, stage=stage.stage + 1))
            nxt = f"stage {stage.stage + 1}"
        self.store.mark_stage(job.job_id, stage.stage, advance_sent=True)
        log_event(logger, "stage_advanced", job_id=job.job_id, stage=stage.stage, status=stage.status,
                  next=nxt, finisher=stage.finisher)

    def complete(self, msg: CompletionMessage) -> None:
        """Write the job's final status: failed (naming the failed tasks) or completed with result_data."""
        job = self.store.get_job(msg.job_id)
        if job is None or job.status in TERMINAL:
            return
        controller = get_controller(job.job_type)
        stages = {s.stage: s for s in self.store.stage_rows(job.job_id)[0]}
        failed = [s for s in stages.values() if s.status == Status.FAILED]
        last = stages.get(controller.total_stages)
        if failed:
            self._finish_job(job.job_id, Status.FAILED, error=self._failure_summary(failed[0]))
        elif last is not None and last.status == Status.COMPLETED:
            outcomes: dict[int, list[TaskOutcome]] = {}
            for o in self.outcomes(job.job_id):
                outcomes.setdefault(o.stage, []).append(o)
            params = controller.parameters_model.model_validate(job.parameters)
            self._finish_job(job.job_id, Status.COMPLETED, result=controller.aggregate(params, outcomes))
        else:
            log_event(logger, "completion_ignored", logging.WARNING, job_id=job.job_id,
                      reason="no stage failed and the last stage has not completed")

    def _failure_summary(self, stage: StageRecord) -> str:
        failed = self.store.list_tasks(stage.job_id, stage.stage, status=Status.FAILED)
        listed = "; ".join(f"{t.task_id}: {t.error_details}" for t in failed[:MAX_ERROR_TASKS_LISTED])
        more = f"; and {len(failed) - MAX_ERROR_TASKS_LISTED} more" if len(failed) > MAX_ERROR_TASKS_LISTED else ""
        return (f"stage {stage.stage} ({stage.name}) failed: {stage.failed} of {stage.total} tasks failed: "
                f"{listed}{more}")

    def outcomes(self, job_id: str, stage: int | None = None) -> list[TaskOutcome]:
        """Outcomes of a job's tasks (or one stage's), in stage then index order."""
        return [TaskOutcome(task_id=t.task_id, stage=t.stage, index=t.index, status=t.status,
                            result=t.result, error_details=t.error_details)
                for t in self.store.list_tasks(job_id, stage)]

    def _finish_job(self, job_id: str, status: Status, result: Any = None, error: str | None = None) -> None:
        for _ in range(MAX_COMMIT_ATTEMPTS):
            job = self.store.get_job(job_id)
            if job is None or job.status in TERMINAL:
                return
            check_transition(job.status, status)
            try:
                self.store.replace_job(job.model_copy(update={
                    "status": status, "result_data": result, "error_details": error, "updated_at": utcnow()}))
                log_event(logger, "job_finished", job_id=job_id, status=status, error=error)
                return
            except ConflictError:
                continue
        raise TransientError(f"job {job_id}: could not write its final status")

    def _move_job(self, job: JobRecord, stage: int, stage_name: str, status: Status) -> None:
        """Bring the job row to ``stage`` / ``status`` (conditional; a no-op if already there)."""
        for _ in range(MAX_COMMIT_ATTEMPTS):
            if job.status in TERMINAL or (job.stage, job.status) == (stage, status):
                return
            if job.status != status:
                check_transition(job.status, status)
            try:
                self.store.replace_job(job.model_copy(update={
                    "stage": stage, "stage_name": stage_name, "status": status, "updated_at": utcnow()}))
                return
            except ConflictError:
                job = self.store.get_job(job.job_id)
        raise TransientError(f"job {job.job_id}: could not move to stage {stage}")


def _count_end(shard: ShardRecord, stage: StageRecord, status: Status,
               token: str) -> tuple[ShardRecord, StageRecord | None]:
    """Counters after one task ends; the stage row changes only when the shard reaches zero."""
    done = {"completed": shard.completed + (status == Status.COMPLETED),
            "failed": shard.failed + (status == Status.FAILED)}
    shard_after = shard.model_copy(update={"remaining": shard.remaining - 1, **done})
    if shard_after.remaining > 0:
        return shard_after, None
    shard_after.finisher = token
    remaining = stage.shards_remaining - 1
    stage_after = stage.model_copy(update={
        "shards_remaining": remaining,
        "completed": stage.completed + shard_after.completed,
        "failed": stage.failed + shard_after.failed})
    if remaining == 0:
        stage_after.status = Status.FAILED if stage_after.failed else Status.COMPLETED
        stage_after.finisher = token
        stage_after.ended_at = utcnow()
    return shard_after, stage_after

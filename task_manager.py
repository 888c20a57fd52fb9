"""The engine's front door: jobs -> stages -> tasks on tables and queues, and where each part lives.

``Engine`` builds one frozen ``EngineContext`` (store, queues, payload blobs, settings, group commit, task
I/O, attempt limit) and hands it to the part that does the work; no part sees the ``Engine``:

============================  =====================================================================
``engine_context``            the context every part takes (and the retry backoff it implies)
``engine_jobs``               submit; what follows a stage; moving, finishing and looking up a job
``engine_fanout``             a stage message: plan once, write counters, task rows and messages in chunks
``engine_tasks``              a task message (or a run of them): claim, run the handler, release or end
``engine_complete``           the one message after an ended stage (advance), then the job's completion
``engine_admin``              operator actions: retry a failed job, cancel a job
``engine_recovery``           poison-queue handlers and the sweeper that re-drives what a crash left
``engine_status``             what a job looks like (status document, task views, catalogued items)
``engine_notify``             completion webhooks; ``engine_links`` read links; ``engine_triggers`` timers
``engine_group_commit``       task writes of one job committed together (``engine_counters``: the counts)
============================  =====================================================================

Exactly-once advance: a task's end is one entity-group transaction over its task row, its counter shard
and (when that shard reaches zero) the stage row, each If-Match; only one can take the stage to zero, and
its writer sends the one advance message. Every handler is safe to repeat.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Literal

import engine_admin
import engine_complete
import engine_fanout
import engine_jobs
import engine_notify
import engine_recovery
import engine_triggers
import engine_tasks
import engine_tracing
from base_controller import JobController, TaskOutcome, TaskResult
from config import Settings, max_dequeue_count
from controller_factory import get_controller
from engine_context import EngineContext
from engine_tasks import gave_up_code
from errors import ErrorCode
from models import (
    CompletionMessage, JobRecord, NotifyMessage, StageMessage, StageRecord, Status, TaskMessage, TaskRecord,
)
from repositories import Repositories

__all__ = ["Engine", "gave_up_code"]


class Engine:
    """Jobs -> stages -> tasks on tables and queues: each method hands its work to the part that owns it."""

    def __init__(self, repos: Repositories, max_attempts: int | None = None) -> None:
        self.repos = repos
        self.context = EngineContext.build(repos, max_attempts or max_dequeue_count())
        ctx = self.context
        self.store, self.settings, self.io, self.commits = ctx.store, ctx.settings, ctx.io, ctx.commits
        self.max_attempts, self.shards_per_stage = ctx.max_attempts, ctx.shards_per_stage

    @classmethod
    def from_settings(cls, settings: Settings) -> "Engine":
        """An engine over the storage ``settings`` name (tables, queues, containers created once)."""
        repos = Repositories(settings).ensure()
        engine_tracing.setup(settings, repos)  # once per process; nothing at all unless configured
        return cls(repos)

    @staticmethod
    def controller(job_type: str) -> JobController[Any]:
        """The controller of a job type; UnknownNameError listing the known ones otherwise."""
        return get_controller(job_type)

    # ------------------------------------------------------------------ submit and lifecycle (engine_jobs)
    @engine_tracing.traced("job.submit")
    def submit(self, job_type: str, body: dict[str, Any], callback_url: str | None = None) -> engine_jobs.Submitted:
        """Validate ``body`` as ``job_type``'s parameters, then create the job once and start it."""
        return engine_jobs.submit(self.context, job_type, body, callback_url)

    def finish_job(self, job_id: str, status: Status, result: Any = None, error: str | None = None) -> bool:
        """Move a job to a terminal status (conditional); False if it already was terminal."""
        return engine_jobs.finish_job(self.context, job_id, status, result, error)

    def notify(self, job: JobRecord) -> None:
        """Queue the webhook delivery of a job that just ended."""
        engine_jobs.notify(self.context, job)

    def outcomes(self, job_id: str, stage: int | None = None) -> list[TaskOutcome]:
        """Outcomes of a job's tasks (or one stage's), in stage then index order."""
        return engine_jobs.outcomes(self.store, job_id, stage)

    # ------------------------------------------------------------------ fan-out (engine_fanout)
    def run_stage(self, msg: StageMessage) -> None:
        """Write stage ``msg.stage``'s rows (once), mark the job, queue the task messages."""
        engine_fanout.run_stage(self.context, msg)

    # ------------------------------------------------------------------ one task (engine_tasks)
    def run_task(self, msg: TaskMessage, dequeue_count: int = 1) -> None:
        """Run one task (or a run of them) once: claim, call its handler, record the outcome, advance if last."""
        engine_tasks.run_task(self.context, msg, dequeue_count)

    def run_one(self, msg: TaskMessage, dequeue_count: int, row: TaskRecord | None | Literal[False] = False) -> None:
        """One task; ``row``: its row as a run read it (False: read it here)."""
        engine_tasks.run_one(self.context, msg, dequeue_count, row)

    def _call_handler(self, task: TaskRecord, reporter: Callable[[float], None] | None = None) -> TaskResult:
        """Run the task's handler once (no claim, no end): its tagged result."""
        return engine_tasks.call_handler(self.context, task, reporter)

    def end_task(self, task: TaskRecord, status: Status, result: Any, error: str | None,
                 code: ErrorCode | None = None, claimer: bool = False) -> None:
        """Commit the task's end with its counters; the one commit that ends the stage advances it."""
        engine_tasks.end_task(self.context, task, status, result, error, code, claimer)

    def cancel_task(self, task: TaskRecord) -> bool:
        """Mark a queued task cancelled (conditional); False if it was claimed meanwhile."""
        return engine_tasks.cancel_task(self.context, task)

    def give_up(self, task: TaskRecord, msg: TaskMessage) -> None:
        """Out of attempts: move the message to the poison queue."""
        engine_tasks.give_up(self.context, task, msg)

    def retry_cap_s(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1`` without jitter."""
        return self.context.retry_cap_s(attempt)

    def retry_delay_s(self, attempt: int) -> int:
        """Backoff before attempt ``attempt + 1``, with +-20% jitter."""
        return self.context.retry_delay_s(attempt)

    # ------------------------------------------------------------------ stage end and completion (engine_complete)
    def advance(self, stage: StageRecord) -> None:
        """Send the one message that follows an ended stage: next stage, or completion."""
        engine_complete.advance(self.context, stage)

    def complete(self, msg: CompletionMessage) -> None:
        """Write the job's final status: failed (naming the failed tasks) or completed with result_data."""
        engine_complete.complete(self.context, msg)

    # ------------------------------------------------------------------ operators (engine_admin)
    def retry(self, job_id: str) -> JobRecord:
        """Re-queue the failed tasks of a failed job and resume it (ConflictError unless it failed)."""
        return engine_admin.retry(self.context, job_id)

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job: queued tasks never start, running ones finish but advance nothing."""
        return engine_admin.cancel(self.context, job_id)

    # ------------------------------------------------------------------ recovery (engine_recovery)
    def on_task_poison(self, body: str | bytes) -> None:
        """A task message gave up: record the task failed (only for the attempt that gave up)."""
        engine_recovery.on_task_poison(self.context, body)

    def on_job_poison(self, body: str | bytes) -> None:
        """A stage or completion message gave up: the job is failed, saying which step kept failing."""
        engine_recovery.on_job_poison(self.context, body)

    def sweep(self, now: datetime | None = None) -> dict[str, int]:
        """Re-drive every active job whose next step looks lost; counts of the actions taken."""
        return engine_recovery.sweep(self.context, now)

    # ------------------------------------------------------------------ webhooks and schedules
    def deliver_webhook(self, msg: NotifyMessage) -> None:
        """One webhook delivery attempt for a job that ended (``engine_notify``)."""
        engine_notify.deliver(self.context, msg)

    @property
    def triggers(self) -> engine_triggers.Triggers:
        """Schedules and watches over this engine's table, submitting through ``submit`` (``engine_triggers``)."""
        return engine_triggers.Triggers(self.repos.triggers, self.settings, self.submit)

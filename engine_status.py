"""The status document of a job: what the status endpoint shows and what webhooks deliver.

Built here, in the engine, so both the API and webhook delivery use one definition (the API adds
paging of the job's tasks on top).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from models import TERMINAL, JobRecord, Status, TaskRecord
from task_manager import Engine

RECENT_ERRORS = 5


class TaskCounts(BaseModel):
    """Tasks by status."""

    total: int = 0
    queued: int = 0
    processing: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0


class StageStatus(BaseModel):
    """One stage in a status response."""

    stage: int
    name: str
    status: Status
    tasks: TaskCounts
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None


class TaskErrorSummary(BaseModel):
    """A task's latest error, as status shows it."""

    task_id: str
    status: Status
    attempts: int
    error: str


class JobStatusResponse(BaseModel):
    """Body of GET /api/jobs/status/{job_id}."""

    job_id: str
    job_type: str
    status: Status
    stage: int
    total_stages: int
    stage_name: str
    parameters: dict[str, Any]
    tasks: TaskCounts
    stages: list[StageStatus]
    progress: float = Field(0.0, ge=0, le=100, description="percent, stage-weighted, over the tasks known so far")
    attempts: int = 0
    retries: int = 0
    recent_errors: list[TaskErrorSummary] = Field(default_factory=list)
    result_data: Any = None
    error_details: str | None = None
    created_at: datetime
    updated_at: datetime
    webhook: str | None = Field(None, description="callback delivery: pending, delivered, failed or refused")
    webhook_error: str | None = None
    task_page: "TaskPage | None" = Field(None, description="with ?verbose=true: the job's tasks, paged")


class TaskView(BaseModel):
    """One task as the API shows it (large parameters and results by reference)."""

    task_id: str
    job_id: str
    stage: int
    index: int
    task_type: str
    status: Status
    attempts: int
    last_error: str | None = None
    error_details: str | None = None
    time_limit_s: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    parameters: Any = None
    result: Any = None


class TaskPage(BaseModel):
    """A page of tasks."""

    tasks: list[TaskView]
    continuation: str | None = None



def task_view(task: TaskRecord) -> TaskView:
    """One task as the API shows it (large parameters and results by reference)."""
    duration = (task.ended_at - task.started_at).total_seconds() if task.ended_at and task.started_at else None
    data = task.model_dump(include=set(TaskView.model_fields) - {"duration_s"})
    return TaskView(**data, duration_s=round(duration, 3) if duration is not None else None)


def status_document(engine: Engine, job: JobRecord) -> JobStatusResponse:
    """The job, its stages (timings, counts, attempts), progress, recent errors, result or error."""
    controller = engine.controller(job.job_type)
    stage_rows = {s.stage: s for s in engine.store.stage_rows(job.job_id)[0]}
    tasks = engine.store.task_summaries(job.job_id)
    stages: list[StageStatus] = []
    for number, definition in enumerate(controller.stages, start=1):
        mine = [t for t in tasks if t["stage"] == number]
        counts = TaskCounts(total=len(mine), **{s.value: sum(t["status"] == s.value for t in mine) for s in Status})
        row = stage_rows.get(number)
        shown = Status.QUEUED if row is None else (
            Status.CANCELLED if row.cancelled and row.status not in TERMINAL else row.status)
        ended = row.ended_at if row is not None and row.status in TERMINAL else None
        stages.append(StageStatus(
            stage=number, name=definition.name, status=shown, tasks=counts,
            attempts=sum(t.get("attempts") or 0 for t in mine),
            started_at=row.created_at if row else None, ended_at=ended,
            duration_s=round((ended - row.created_at).total_seconds(), 3) if ended else None))
    totals = TaskCounts(**{f: sum(getattr(s.tasks, f) for s in stages) for f in TaskCounts.model_fields})
    with_errors = sorted((t for t in tasks if t.get("error_details") or t.get("last_error")),
                         key=lambda t: str(t.get("ended_at") or ""), reverse=True)[:RECENT_ERRORS]
    recent = [TaskErrorSummary(task_id=t["task_id"], status=t["status"], attempts=t.get("attempts") or 0,
                               error=t.get("error_details") or t.get("last_error")) for t in with_errors]
    return JobStatusResponse(
        job_id=job.job_id, job_type=job.job_type, status=job.status, stage=job.stage,
        total_stages=job.total_stages, stage_name=job.stage_name, parameters=job.parameters, tasks=totals,
        stages=stages, progress=progress(job.status, stages), attempts=sum(s.attempts for s in stages),
        retries=job.retries, recent_errors=recent,
        result_data=job.result_data if job.status == Status.COMPLETED else None,
        error_details=job.error_details, created_at=job.created_at, updated_at=job.updated_at,
        webhook=job.webhook, webhook_error=job.webhook_error)


def progress(job_status: Status, stages: list[StageStatus]) -> float:
    """0-100: each stage weighs the same; within a stage, the share of its known tasks that ended."""
    if job_status == Status.COMPLETED:
        return 100.0
    done = 0.0
    for s in stages:
        if s.status == Status.COMPLETED:
            done += 1
        elif s.tasks.total:
            done += (s.tasks.completed + s.tasks.failed + s.tasks.cancelled) / s.tasks.total
    return round(100 * done / max(1, len(stages)), 1)

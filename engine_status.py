"""What the engine shows: the status document of a job (what the status endpoint shows and what webhooks
deliver), task views, and the catalogued items' footprints (the dashboard's map).

Built here, in the engine, so both the API and webhook delivery use one definition (the API adds
paging of the job's tasks on top), and no API module touches the database.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

import engine_tracing
from controller_factory import get_controller
from engine_task_io import StorageTaskIO
from errors import ErrorCode, NotConfiguredError
from models import TERMINAL, JobRecord, ShardRecord, StageRecord, Status, TaskRecord, is_cut
from repositories import JobStore

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
    progress: float = Field(0.0, ge=0, le=100, description="percent of the stage's tasks done, "
                            "counting what running tasks report")
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None


class TaskErrorSummary(BaseModel):
    """A task's latest error, as status shows it."""

    task_id: str
    status: Status
    attempts: int
    error: str
    error_code: ErrorCode | None = Field(None, description="why it failed, for machines (null while it is "
                                         "only waiting to retry)")


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
    trace_id: str | None = Field(None, description="the job's trace (Application Insights operation_Id), when "
                                 "tracing was on at submit")
    task_page: "TaskPage | None" = Field(None, description="with ?verbose=true: the job's tasks, paged")


class TaskView(BaseModel):
    """One task as the API shows it (large parameters and results by reference)."""

    task_id: str
    job_id: str
    stage: int
    index: int
    task_type: str
    task_version: int | None = None
    status: Status
    attempts: int
    progress: int | None = None
    last_error: str | None = None
    error_details: str | None = None
    error_code: ErrorCode | None = Field(None, description="why the task failed, for machines")
    time_limit_s: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    parameters: Any = None
    result: Any = None
    cut: list[str] | None = Field(None, description="fields shown cut to their head and tail (long texts); "
                                  "GET the task with ?full=true for them whole")


class TaskPage(BaseModel):
    """A page of tasks."""

    tasks: list[TaskView]
    continuation: str | None = None



def task_view(task: TaskRecord) -> TaskView:
    """One task as the API shows it (large parameters and results by reference)."""
    duration = (task.ended_at - task.started_at).total_seconds() if task.ended_at and task.started_at else None
    data = task.model_dump(include=set(TaskView.model_fields) - {"duration_s", "error_code", "cut"})
    return TaskView(**data, error_code=known_code(task.error_code),
                    duration_s=round(duration, 3) if duration is not None else None,
                    cut=[name for name in task.TEXT_FIELDS if is_cut(getattr(task, name))] or None)


def known_code(code: str | None) -> ErrorCode | None:
    """A stored error code as the API shows it (one this version does not know: ``task_failed``)."""
    if code is None:
        return None
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.TASK_FAILED


def stage_counts(row: StageRecord | None, shards: list[ShardRecord]) -> tuple[TaskCounts, int]:
    """A stage's task counts and attempts, from the counters the engine keeps (never task rows).

    ``processing`` counts tasks started and not ended (including ones waiting to retry).
    """
    if row is None:
        return TaskCounts(), 0
    completed = sum(s.completed for s in shards)
    failed = sum(s.failed for s in shards)
    started = sum(s.started for s in shards)
    cancelled = min(row.cancelled_tasks, row.total - completed - failed)
    processing = max(0, min(started - completed - failed, row.total - completed - failed - cancelled))
    counts = TaskCounts(total=row.total, completed=completed, failed=failed, cancelled=cancelled,
                        processing=processing, queued=row.total - completed - failed - cancelled - processing)
    return counts, started + sum(s.retried for s in shards)


def stage_progress(counts: TaskCounts, shards: list[ShardRecord]) -> float:
    """0-100 for one stage: ended tasks whole, running ones as far as they reported."""
    if not counts.total:
        return 0.0
    running = min(sum(s.progress for s in shards) / 100, counts.processing)
    return round(100 * min(1.0, (counts.completed + counts.failed + counts.cancelled + running) / counts.total), 1)


def recent_errors(shards: list[ShardRecord]) -> list[TaskErrorSummary]:
    """The latest task errors of the job, from the bounded record each counter shard keeps."""
    entries = sorted((e for s in shards for e in s.errors), key=lambda e: e.get("at", ""), reverse=True)
    return [TaskErrorSummary(task_id=e["task_id"], status=e.get("status", Status.FAILED.value),
                             attempts=e.get("attempts", 0), error=e.get("error", ""),
                             error_code=known_code(e.get("error_code")))
            for e in entries[:RECENT_ERRORS]]


def status_document(store: JobStore, job: JobRecord) -> JobStatusResponse:
    """The job, its stages (timings, counts, attempts), progress, recent errors, result or error.

    Two storage requests whatever the number of tasks: the job row and one range query over its stage
    and counter rows.
    """
    controller = get_controller(job.job_type)
    rows, all_shards = store.stage_rows(job.job_id)
    stage_rows = {s.stage: s for s in rows}
    stages: list[StageStatus] = []
    for number, definition in enumerate(controller.stages, start=1):
        row = stage_rows.get(number)
        mine = [s for s in all_shards if s.stage == number]
        counts, attempts = stage_counts(row, mine)
        shown = Status.QUEUED if row is None else (
            Status.CANCELLED if row.cancelled and row.status not in TERMINAL else row.status)
        ended = row.ended_at if row is not None and row.status in TERMINAL else None
        stages.append(StageStatus(
            stage=number, name=definition.name, status=shown, tasks=counts, attempts=attempts,
            progress=100.0 if shown == Status.COMPLETED else stage_progress(counts, mine),
            started_at=row.created_at if row else None, ended_at=ended,
            duration_s=round((ended - row.created_at).total_seconds(), 3) if ended and row is not None else None))
    totals = TaskCounts(**{f: sum(getattr(s.tasks, f) for s in stages) for f in TaskCounts.model_fields})
    return JobStatusResponse(
        job_id=job.job_id, job_type=job.job_type, status=job.status, stage=job.stage,
        total_stages=job.total_stages, stage_name=job.stage_name, parameters=job.parameters, tasks=totals,
        stages=stages, progress=progress(job.status, stages), attempts=sum(s.attempts for s in stages),
        retries=job.retries, recent_errors=recent_errors(all_shards),
        result_data=job.result_data if job.status == Status.COMPLETED else None,
        error_details=job.error_details, created_at=job.created_at, updated_at=job.updated_at,
        webhook=job.webhook, webhook_error=job.webhook_error, trace_id=engine_tracing.trace_id(job.traceparent))


def progress(job_status: Status, stages: list[StageStatus]) -> float:
    """0-100: each stage weighs the same; within a stage, its own progress (running tasks count as far
    as they reported)."""
    if job_status == Status.COMPLETED:
        return 100.0
    return round(sum(s.progress for s in stages) / max(1, len(stages)), 1)


def item_footprints(io: StorageTaskIO, collection: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` catalogued items (of ``collection``, or of every collection) as GeoJSON features:
    id, collection, bbox, geometry and datetime. NotConfiguredError (503) without a catalogue."""
    if not io.settings.pgstac_host:
        raise NotConfiguredError("no STAC catalogue is configured: set PGSTAC_HOST (and the other PGSTAC_* "
                                 "settings) to see catalogued items")
    items = io.pgstac().search(collections=[collection] if collection else None, limit=limit)
    return [{"type": "Feature", "id": item.get("id"), "collection": item.get("collection"),
             "bbox": item.get("bbox"), "geometry": item.get("geometry"),
             "properties": {"datetime": (item.get("properties") or {}).get("datetime")}}
            for item in items]

"""API bodies: every request and response the HTTP functions speak, as pydantic models.

The OpenAPI document is generated from these and from the job-type registry.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from models import Status

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


class SubmitResponse(BaseModel):
    """Body of POST /api/jobs/submit/{job_type}."""

    job_id: str
    job_type: str
    status: Status
    stage: int
    total_stages: int
    status_url: str
    created: bool
    hint: str | None = None


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


class StageTiming(BaseModel):
    """When a stage ran."""

    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None


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


class JobSummary(BaseModel):
    """One job in a listing."""

    job_id: str
    job_type: str
    status: Status
    stage: int
    total_stages: int
    created_at: datetime
    updated_at: datetime
    status_url: str
    idle_s: float | None = None


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    jobs: list[JobSummary]
    continuation: str | None = None


class StageInfo(BaseModel):
    """A stage of a job type."""

    stage: int
    name: str
    task_type: str
    parallelism: Literal["one task", "one task per input", "one task per tile", "n tasks"]
    description: str = ""


class JobTypeInfo(BaseModel):
    """A registered job type: what it does and what it takes."""

    job_type: str
    description: str
    stages: list[StageInfo]
    parameters: dict[str, Any] = Field(description="JSON Schema of the parameters")
    tolerated_failure_fraction: float = 0.0


class JobTypes(BaseModel):
    """Every registered job type."""

    job_types: list[JobTypeInfo]


class ErrorBody(BaseModel):
    """Every error response."""

    error: str = Field(description="stable machine-readable code")
    message: str = Field(description="what went wrong, for people")
    available: list[str] | None = None
    errors: list[dict[str, Any]] | None = None

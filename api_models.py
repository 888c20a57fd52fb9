"""API bodies: every request and response the HTTP functions speak, as pydantic models.

The OpenAPI document is generated from these and from the job-type registry.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from engine_status import (  # noqa: F401  (re-exported: the API's bodies)
    JobStatusResponse, StageStatus, TaskCounts, TaskErrorSummary, TaskPage, TaskView,
)
from models import Status


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


class StageTiming(BaseModel):
    """When a stage ran."""

    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None


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

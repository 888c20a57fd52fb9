"""API bodies: every request and response the HTTP functions speak, as pydantic models.

The OpenAPI document is generated from these and from the job-type registry.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    task_version: int = Field(1, description="bumped when the task's meaning or output changes")
    time_limit_s: int = Field(description="a task's lease: past it, another attempt takes over")
    parallelism: Literal["one task", "one task per input", "one task per tile", "one task per chunk of items",
                         "n tasks"]
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


# ---------------------------------------------------------------- jobs that start by themselves (issue #13)
class ScheduleRequest(BaseModel):
    """Body of POST /api/schedules."""

    model_config = ConfigDict(extra="forbid")
    job_type: str = Field(min_length=1, max_length=100, description="the job type each slot starts")
    parameters: dict[str, Any] = Field(default_factory=dict, description="the job type's parameters (checked now)")
    expression: str = Field(min_length=1, max_length=200, description="NCRONTAB, 6 fields: second minute hour "
                            "day month day-of-week, UTC; e.g. '0 0 2 * * *' is 02:00 every day")
    name: str | None = Field(default=None, min_length=1, max_length=200, description="a label for people")


class ScheduleView(BaseModel):
    """A schedule, its next slot and what became of its latest one."""

    schedule_id: str
    name: str | None = None
    job_type: str
    parameters: dict[str, Any]
    expression: str
    created_at: datetime
    next_slot: datetime | None = Field(default=None, description="when it fires next (UTC)")
    last_slot: datetime | None = Field(default=None, description="the latest slot claimed")
    last_job_id: str | None = Field(default=None, description="the job of last_slot, once submitted")
    last_error: str | None = Field(default=None, description="why last_slot's job was refused")
    skipped_slots: int = Field(default=0, description="slots passed over by the latest-only policy (downtime)")


class ScheduleList(BaseModel):
    """Body of GET /api/schedules."""

    schedules: list[ScheduleView]


class WatchRequest(BaseModel):
    """Body of POST /api/watches."""

    model_config = ConfigDict(extra="forbid")
    container: str = Field(min_length=1, max_length=63, description="the container to watch")
    prefix: str = Field(default="", max_length=1024, description="only blobs whose name starts with this")
    job_type: str = Field(min_length=1, max_length=100, description="a job type taking container, blob and "
                          "source_etag (validate_raster, process_raster, ...)")
    options: dict[str, Any] = Field(default_factory=dict, description="the job type's other parameters")
    name: str | None = Field(default=None, min_length=1, max_length=200, description="a label for people")


class WatchView(BaseModel):
    """A watch: each new or changed raster blob under container/prefix starts one job."""

    watch_id: str
    name: str | None = None
    container: str
    prefix: str
    job_type: str
    options: dict[str, Any]
    source: Literal["api", "settings"]
    created_at: datetime


class WatchList(BaseModel):
    """Body of GET /api/watches."""

    watches: list[WatchView]


class Deleted(BaseModel):
    """Body of a successful DELETE."""

    deleted: str = Field(description="the id that was deleted")

"""What a job type is: a parameters model, ordered stages, and how results aggregate.

A ``Stage`` is self-contained (a task type and a planner that turns job parameters plus the previous
stage's outcomes into task parameters), so the same stage can serve several job types, or run alone
as a one-stage job. A ``TaskHandler`` is a typed function: validated parameters in, result out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, Protocol, TypeVar

from pydantic import BaseModel, Field, ValidationError

from config import Settings, get_settings
from errors import ParameterValidationError, validation_errors
from models import MAX_STAGES, MAX_TASKS_PER_STAGE, BlobInfo, Status

P = TypeVar("P", bound=BaseModel)
# Validation context of a submit: the containers a job may name (settings.job_containers); parameter
# fields typed ``JobContainer`` (controller_geo_common) refuse others with this error type.
CONTAINERS_CONTEXT = "allowed_containers"
CONTAINER_NOT_ALLOWED = "container_not_allowed"


class JobParameters(BaseModel):
    """Base of every job type's parameters: what a schedule sets (issue #13).

    ``scheduled_for`` is the schedule slot a job runs for, part of the job's identity, so each slot runs
    once. Unset, it is left out of the parameters, so every other job keeps the identity it had.
    """

    scheduled_for: datetime | None = Field(
        default=None, exclude_if=lambda value: value is None,
        description="Set by a schedule: the slot (UTC) this job runs for; part of the job's identity.")


class TaskOutcome(BaseModel):
    """What a finished task left behind, as later stages and aggregation see it."""

    task_id: str
    stage: int
    index: int
    status: Status
    result: Any = None
    error_details: str | None = None


class RasterBlobs(Protocol):
    """Raster blobs in the containers jobs may use (engine_task_io restricts them)."""

    def ensure_container(self, container: str) -> None:
        """Create the container if missing."""

    def properties(self, container: str, blob: str) -> BlobInfo:
        """A blob's size, type, last-modified and ETag; NotFoundError if missing."""

    def list(self, container: str, prefix: str | None = None) -> Iterator[BlobInfo]:
        """Blobs under ``prefix``."""

    def head_bytes(self, container: str, blob: str, length: int) -> bytes:
        """The first ``length`` bytes of a blob."""

    def download(self, container: str, blob: str, path: Path) -> BlobInfo:
        """Stream a blob to a local file."""

    def upload(self, container: str, blob: str, path: Path, content_type: str = ...) -> BlobInfo:
        """Stream a local file to a blob (overwriting)."""

    def url(self, container: str, blob: str) -> str:
        """The blob's plain URL."""

    def read_sas_url(self, container: str, blob: str, now: datetime | None = None) -> str | None:
        """A short-lived read-only URL, or None where SAS is off."""


class IntermediateBlobs(Protocol):
    """The app's own blobs passed between tasks (tiles)."""

    def upload(self, blob: str, path: Path) -> BlobInfo:
        """Store a local file."""

    def download(self, blob: str, path: Path) -> BlobInfo:
        """Fetch a stored file."""


class Catalogue(Protocol):
    """The STAC catalogue (pgstac)."""

    def ensure_collection(self, collection: dict) -> str:
        """Create or update a collection, keeping its extent true."""

    def upsert_item(self, item: dict) -> str:
        """Insert or replace one item."""

    def bulk_load(self, items: Iterable[dict], mode: str = "upsert") -> int:
        """Load many items at once."""

    def stored_ids(self, collection_id: str, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` the collection holds."""

    def get_item(self, collection_id: str, item_id: str) -> dict | None:
        """One item, or None."""


class TaskIO(Protocol):
    """What a task handler or an I/O planner may touch, handed in by the engine."""

    settings: Settings
    rasters: RasterBlobs
    intermediates: IntermediateBlobs
    known_collections: set[str]

    def pgstac(self) -> Catalogue:
        """The catalogue; TaskError when none is configured."""

    def scratch(self, label: str = "task") -> AbstractContextManager[Path]:
        """A private temporary folder, removed on exit."""

    def stage_results(self, job_id: str, stage: int, first: int, last: int) -> list[Any]:
        """Results of the completed tasks ``first``..``last`` of one of the job's stages, in index order."""


@dataclass(frozen=True)
class TaskContext:
    """Where a task runs: ids for logs, results and lineage."""

    job_id: str
    task_id: str
    stage: int
    index: int
    attempt: int
    io: TaskIO | None = None  # blobs, catalogue, scratch folders (engine_task_io, handed in by the engine)
    report: Callable[[float], None] | None = None  # the engine's progress sink (throttled)

    def progress(self, percent: float) -> None:
        """Say how far the task is, 0-100; cheap to call often (the engine writes at most every few seconds)."""
        if self.report is not None:
            self.report(max(0.0, min(100.0, float(percent))))


Planner = Callable[[Any, list[TaskOutcome]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Stage:
    """One stage: ``plan(job_parameters, previous_outcomes)`` returns each task's parameters, in order.

    The planner must be deterministic: a redelivered stage message plans the same tasks again. A
    planner that reads storage (``plan_uses_io``: called as ``plan(params, previous, io)``) may not be,
    so the engine stores its first plan and reuses it on every redelivery.
    """

    name: str
    task_type: str
    plan: Planner
    description: str = ""
    plan_uses_io: bool = False
    parallelism: str = "n tasks"  # for people: "one task", "one task per input", "one task per tile",
    # "one task per chunk of items", "n tasks" (api_models.StageInfo lists them)
    tolerates_failures: bool = True  # False: any failed task fails the job, whatever the job type tolerates
    plan_reads_results: bool = True  # False: the planner gets the previous stage's outcomes without their
    # results (status and index only: a stage of any size plans in one small read; its tasks read the results)


@dataclass(frozen=True)
class TaskHandler(Generic[P]):
    """A task type: its parameters model and the function that does the work."""

    task_type: str
    parameters_model: type[P]
    run: Callable[[P, TaskContext], Any]
    description: str = ""
    time_limit_s: int | None = None  # None: the TASK_TIME_LIMIT_S setting
    version: int = 1  # bump when the task's meaning or output changes; carried by rows, status and logs
    tasks_per_message: int = 1  # > 1 for short tasks: fan-out sends one message per run of up to this many
    # neighbouring tasks, which one invocation runs in order (each still claimed, retried and ended alone)


@dataclass(frozen=True)
class JobController:
    """A job type: parameters, ordered stages (at least one), and result aggregation.

    ``aggregate(parameters, outcomes_by_stage)`` sees only completed tasks; when failures are
    tolerated, the engine adds ``failed_tasks`` (id and error of each) to the result itself.
    """

    job_type: str
    description: str
    parameters_model: type[BaseModel]
    stages: tuple[Stage, ...]
    aggregate: Callable[[Any, dict[int, list[TaskOutcome]]], Any]
    tolerated_failure_fraction: float = 0.0  # share of a stage's tasks that may fail without failing the job
    aggregates_outcomes: bool = True  # False: ``aggregate`` gets {} (no task rows read: jobs of any size)
    outcome_stages: tuple[int, ...] | None = None  # the stages whose outcomes ``aggregate`` reads (None: all)

    def __post_init__(self) -> None:
        if not 1 <= len(self.stages) <= MAX_STAGES:
            raise ValueError(f"job type {self.job_type!r} needs 1..{MAX_STAGES} stages")
        if not 0.0 <= self.tolerated_failure_fraction < 1.0:
            raise ValueError(f"job type {self.job_type!r}: tolerated_failure_fraction must be in [0, 1)")

    def tolerated_failures(self, total: int, stage: int | None = None) -> int:
        """How many of a stage's ``total`` tasks may fail with the job still completing (none in a stage
        that ``tolerates_failures=False``)."""
        if stage is not None and not self.stage(stage).tolerates_failures:
            return 0
        return int(self.tolerated_failure_fraction * total)

    @property
    def total_stages(self) -> int:
        """Number of stages."""
        return len(self.stages)

    def stage(self, number: int) -> Stage:
        """Stage ``number`` (1-based)."""
        return self.stages[number - 1]

    def validate(self, raw: Any, settings: Any = None) -> BaseModel:
        """Validated parameters with defaults applied (settings-based ones from ``settings``), or
        ParameterValidationError."""
        if not isinstance(raw, dict):
            raise ParameterValidationError("parameters must be a JSON object",
                                           errors=[{"field": "(body)", "message": "expected a JSON object",
                                                    "type": "dict_type"}])
        settings = settings or get_settings()
        defaults = getattr(self.parameters_model, "SETTINGS_DEFAULTS", {})
        raw = {**{name: getattr(settings, setting) for name, setting in defaults.items()}, **raw}
        try:  # strict JSON types: "3" is not an integer, 1700000000 is not a date-time
            return self.parameters_model.model_validate_json(
                json.dumps(raw), strict=True, context={CONTAINERS_CONTEXT: settings.job_containers})
        except ValidationError as exc:
            errors = validation_errors(exc)
            allowed = ({"allowed_containers": list(settings.job_containers)}
                       if any(e["type"] == CONTAINER_NOT_ALLOWED for e in errors) else {})
            raise ParameterValidationError(
                f"invalid parameters for {self.job_type}: "
                + "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors, **allowed) from None

    def plan_stage(self, number: int, parameters: BaseModel, previous: list[TaskOutcome],
                   io: Any = None) -> list[dict[str, Any]]:
        """Task parameters for stage ``number``; at most MAX_TASKS_PER_STAGE."""
        stage = self.stage(number)
        tasks = stage.plan(parameters, previous, io) if stage.plan_uses_io else stage.plan(parameters, previous)
        if len(tasks) > MAX_TASKS_PER_STAGE:
            raise ValueError(f"stage {number} planned {len(tasks)} tasks; the limit is {MAX_TASKS_PER_STAGE}")
        return tasks


def outcomes_in_order(outcomes: list[TaskOutcome]) -> list[TaskOutcome]:
    """Outcomes sorted by task index."""
    return sorted(outcomes, key=lambda o: o.index)


def succeeded(outcomes: list[TaskOutcome]) -> list[TaskOutcome]:
    """The completed outcomes, by index (what a next stage builds on when failures are tolerated)."""
    return [o for o in outcomes_in_order(outcomes) if o.status == Status.COMPLETED]

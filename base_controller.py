"""What a job type is: a parameters model, ordered stages, and how results aggregate.

A ``Stage`` is self-contained (a task type and a planner that turns job parameters plus the previous
stage's outcomes into task parameters), so the same stage can serve several job types, or run alone
as a one-stage job. A ``TaskHandler`` is a typed function: validated parameters in, its output model (or a
JSON object) out; it sees storage only through ``TaskIO``, the protocol that lists every call it may make. The
engine turns each run into a ``TaskResult``: ``Completed``, ``Failed`` or ``Retry``.
"""
from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import (
    Any, Callable, ClassVar, Generic, Iterable, Iterator, Literal, Protocol, Self, TypeAlias, TypeVar, cast,
)

from pydantic import BaseModel, Field, ValidationError

from config import Settings
from errors import ErrorCode, ParameterValidationError, validation_errors
from models import MAX_STAGES, TASK_INDEX_LIMIT, BlobInfo, Status

P = TypeVar("P", bound=BaseModel)  # a task type's parameters model
J = TypeVar("J", bound=BaseModel)  # a job type's parameters model
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

    def siblings(self, container: str, prefix: str, names: Iterable[str]) -> dict[str, BlobInfo]:
        """Of ``names``, those that exist under ``prefix`` (one listing), by name."""

    def head_bytes(self, container: str, blob: str, length: int) -> bytes:
        """The first ``length`` bytes of a blob."""

    def download(self, container: str, blob: str, path: Path, max_bytes: int | None = None) -> BlobInfo:
        """Stream a blob to a local file (stopping after ``max_bytes`` when given)."""

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

    def delete(self, blob: str) -> bool:
        """Remove a stored file once its consumer is done; False if it was gone already."""


class Catalogue(Protocol):
    """The STAC catalogue (pgstac)."""

    def ensure_collection(self, collection: dict[str, Any]) -> str:
        """Create or update a collection, keeping its extent true."""

    def upsert_item(self, item: dict[str, Any]) -> str:
        """Insert or replace one item."""

    def bulk_load(self, items: Iterable[dict[str, Any]],
                  mode: Literal["upsert", "insert", "ignore"] = "upsert") -> int:
        """Load many items at once."""

    def stored_ids(self, collection_id: str, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` the collection holds."""

    def get_item(self, collection_id: str, item_id: str) -> dict[str, Any] | None:
        """One item, or None."""


class Meter(Protocol):
    """Peak memory and scratch disk of a piece of work: a context manager around it, then ``report()``."""

    def __enter__(self) -> Self:
        """Start sampling."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop sampling (one last sample)."""

    def report(self) -> dict[str, float]:
        """The peaks, in MiB (what a task puts in its result as ``resources``)."""


class TaskIO(Protocol):
    """What a task handler or an I/O planner may touch, handed in by the engine: every call a handler makes
    is listed here (mypy checks the handlers against it, and the engine's class against it)."""

    @property
    def settings(self) -> Settings:
        """The deployment's settings (limits such as ``whole_read_bytes`` and ``max_tiles_per_job``)."""

    @property
    def rasters(self) -> RasterBlobs:
        """Raster blobs in the containers jobs may use."""

    @property
    def intermediates(self) -> IntermediateBlobs:
        """The app's own blobs passed between tasks (tiles)."""

    @property
    def known_collections(self) -> set[str]:
        """Collections this process has ensured (a cache: add after ensuring, discard when one is gone)."""

    def pgstac(self) -> Catalogue:
        """The catalogue; TaskError when none is configured."""

    def scratch(self, label: str = "task") -> AbstractContextManager[Path]:
        """A private temporary folder, removed on exit."""

    def measure(self, folder: Path) -> Meter:
        """A meter of peak memory and of ``folder``'s size."""

    def stage_results(self, job_id: str, stage: int, first: int, last: int) -> list[dict[str, Any]]:
        """Results of the completed tasks ``first``..``last`` of one of the job's stages, in index order."""


@dataclass(frozen=True)
class TaskContext:
    """Where a task runs: ids for logs, results and lineage."""

    job_id: str
    task_id: str
    stage: int
    index: int
    attempt: int
    io: TaskIO  # blobs, catalogue, scratch folders (engine_task_io, handed in by the engine)
    report: Callable[[float], None] | None = None  # the engine's progress sink (throttled)

    def progress(self, percent: float) -> None:
        """Say how far the task is, 0-100; cheap to call often (the engine writes at most every few seconds)."""
        if self.report is not None:
            self.report(max(0.0, min(100.0, float(percent))))


PlannedTasks: TypeAlias = list[dict[str, Any]]  # each task's parameters, as JSON
# A planner's first argument is its job type's parameters model (each job type its own: hence Any here).
Planner: TypeAlias = Callable[[Any, list[TaskOutcome]], PlannedTasks]
IoPlanner: TypeAlias = Callable[[Any, list[TaskOutcome], TaskIO], PlannedTasks]  # ``plan_uses_io=True``


@dataclass(frozen=True)
class Stage:
    """One stage: ``plan(job_parameters, previous_outcomes)`` returns each task's parameters, in order.

    The planner must be deterministic: a redelivered stage message plans the same tasks again. A
    planner that reads storage (``plan_uses_io``: called as ``plan(params, previous, io)``) may not be,
    so the engine stores its first plan and reuses it on every redelivery.
    """

    name: str
    task_type: str
    plan: Planner | IoPlanner
    description: str = ""
    plan_uses_io: bool = False
    parallelism: str = "n tasks"  # for people: "one task", "one task per input", "one task per tile",
    # "one task per chunk of items", "n tasks" (api_models.StageInfo lists them)
    tolerates_failures: bool = True  # False: any failed task fails the job, whatever the job type tolerates
    plan_reads_results: bool = True  # False: the planner gets the previous stage's outcomes without their
    # results (status and index only: a stage of any size plans in one small read; its tasks read the results)


# What a handler returns: its output model, or a JSON object. The engine stores it as JSON (``output_json``).
TaskOutput: TypeAlias = BaseModel | dict[str, Any]


@dataclass(frozen=True)
class Completed:
    """The handler returned: ``result`` is its output as stored in the task row (JSON)."""

    status: ClassVar[Status] = Status.COMPLETED
    result: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """A permanent failure: the task ends failed with ``error`` (shown to users) and its reason ``code``."""

    status: ClassVar[Status] = Status.FAILED
    error: str
    code: ErrorCode


@dataclass(frozen=True)
class Retry:
    """A transient failure: the task is handed back (queued) and tried again later, until out of attempts."""

    status: ClassVar[Status] = Status.QUEUED
    error: str
    code: ErrorCode


TaskResult: TypeAlias = Completed | Failed | Retry  # what the engine makes of one run of a handler


def output_json(output: TaskOutput) -> dict[str, Any]:
    """A handler's output as stored in its task row: a model dumped to JSON, a JSON object as it is."""
    return output.model_dump(mode="json") if isinstance(output, BaseModel) else output


@dataclass(frozen=True)
class TaskHandler(Generic[P]):
    """A task type: its parameters model and the function that does the work (validated parameters in,
    ``TaskOutput`` out; errors raised: ``TransientError`` to retry, any other to fail the task)."""

    task_type: str
    parameters_model: type[P]
    run: Callable[[P, TaskContext], TaskOutput]
    description: str = ""
    time_limit_s: int | None = None  # None: the TASK_TIME_LIMIT_S setting
    version: int = 1  # bump when the task's meaning or output changes; carried by rows, status and logs
    tasks_per_message: int = 1  # > 1 for short tasks: fan-out sends one message per run of up to this many
    # neighbouring tasks, which one invocation runs in order (each still claimed, retried and ended alone)


@dataclass(frozen=True)
class JobController(Generic[J]):
    """A job type: parameters, ordered stages (at least one), and result aggregation.

    ``aggregate(parameters, outcomes_by_stage)`` sees only completed tasks; when failures are
    tolerated, the engine adds ``failed_tasks`` (id and error of each) to the result itself.
    """

    job_type: str
    description: str
    parameters_model: type[J]
    stages: tuple[Stage, ...]
    # (the job type's parameters, completed outcomes by stage) -> the job's result_data (any JSON value)
    aggregate: Callable[[J, dict[int, list[TaskOutcome]]], Any]
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

    def validate(self, raw: object, settings: Settings) -> J:
        """Validated parameters with defaults applied (settings-based ones from ``settings``, the engine's), or
        ParameterValidationError."""
        if not isinstance(raw, dict):
            raise ParameterValidationError("parameters must be a JSON object",
                                           errors=[{"field": "(body)", "message": "expected a JSON object",
                                                    "type": "dict_type"}])
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
                   io: TaskIO | None = None) -> PlannedTasks:
        """Task parameters for stage ``number``; at most TASK_INDEX_LIMIT (the engine also checks the
        deployment's own MAX_TASKS_PER_STAGE setting)."""
        stage = self.stage(number)
        if stage.plan_uses_io:  # the flag says which of the two planner shapes ``plan`` has
            if io is None:
                raise ValueError(f"stage {number} plans with storage: pass the task I/O")
            tasks = cast(IoPlanner, stage.plan)(parameters, previous, io)
        else:
            tasks = cast(Planner, stage.plan)(parameters, previous)
        if len(tasks) > TASK_INDEX_LIMIT:
            raise ValueError(f"stage {number} planned {len(tasks)} tasks; the limit is {TASK_INDEX_LIMIT}")
        return tasks


def outcomes_in_order(outcomes: list[TaskOutcome]) -> list[TaskOutcome]:
    """Outcomes sorted by task index."""
    return sorted(outcomes, key=lambda o: o.index)


def succeeded(outcomes: list[TaskOutcome]) -> list[TaskOutcome]:
    """The completed outcomes, by index (what a next stage builds on when failures are tolerated)."""
    return [o for o in outcomes_in_order(outcomes) if o.status == Status.COMPLETED]

"""Pydantic models for every row, message and API body, and the one status table.

Messages convert symmetrically with ``encode()`` / ``decode()``. Rows declare their JSON fields and their free
texts (bounded where they are made); ``repository_entities`` stores them as Table Storage entities
(``to_entity()`` / ``from_entity()``, keys validated against Table Storage's forbidden characters).
"""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Union, overload

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from errors import InvalidKeyError, InvalidTransitionError, echo

SCHEMA_VERSION = 1
MAX_STAGES = 99
TASK_INDEX_LIMIT = 999_999  # a task's index has 6 digits in its id and RowKey: no stage holds more tasks


def utcnow() -> datetime:
    """Aware UTC now."""
    return datetime.now(timezone.utc)


def new_write_id() -> str:
    """A fresh id for one conditional write."""
    return uuid.uuid4().hex


class Status(StrEnum):
    """Status of a job, a stage or a task.

    queued: written, not started (a task handed back for a retry is queued again).
    processing: started (a job: some stage is running). completed / failed / cancelled: terminal;
    only the retry API reopens a failed job (see RETRY_TRANSITIONS).
    """

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.PROCESSING, Status.FAILED, Status.CANCELLED}),
    # processing -> queued: a task handed back after a transient error or an expired lease
    Status.PROCESSING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.QUEUED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}
RETRY_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.FAILED: frozenset({Status.QUEUED, Status.PROCESSING}),
}
TERMINAL: frozenset[Status] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


def check_transition(current: Status, new: Status, retry: bool = False) -> None:
    """Raise InvalidTransitionError unless ``current -> new`` is in the table (or, for the retry API,
    in RETRY_TRANSITIONS)."""
    allowed = TRANSITIONS[current] | (RETRY_TRANSITIONS.get(current, frozenset()) if retry else frozenset())
    if new not in allowed:
        raise InvalidTransitionError(f"status cannot go from {current} to {new}")


# ---------------------------------------------------------------- names Azure Storage accepts
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # never in a blob name

_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
MAX_BLOB_NAME = 1024


def validate_container_name(name: str) -> str:
    """Azure's container rules: 3-63 chars, lowercase letters, digits, single hyphens inside."""
    if not isinstance(name, str) or not _CONTAINER.match(name):
        raise ValueError(f"{echo(name)} is not a valid container name (3-63 lowercase letters, digits and "
                         "single hyphens, starting and ending with a letter or digit)")
    return name


def validate_blob_name(name: str) -> str:
    """Azure's blob rules plus ours: 1-1024 chars, no control characters, relative, no '.'/'..' parts."""
    if not isinstance(name, str) or not name or len(name) > MAX_BLOB_NAME:
        raise ValueError(f"a blob name must be 1-{MAX_BLOB_NAME} characters")
    if name.startswith("/") or "\\" in name:
        raise ValueError(f"blob name {echo(name)} must be a relative path with '/' separators")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"blob name {echo(name)} has an empty, '.' or '..' path segment")
    if _CONTROL.search(name):
        raise ValueError(f"blob name {echo(name)} contains control characters")
    if name.count("/") >= 254:
        raise ValueError("a blob name may have at most 254 path segments")
    return name


ContainerName = Annotated[str, AfterValidator(validate_container_name)]
BlobName = Annotated[str, AfterValidator(validate_blob_name)]


# ---------------------------------------------------------------- ids
def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the form job ids are hashed from."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def make_job_id(job_type: str, parameters: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of {job_type, validated parameters}."""
    payload = canonical_json({"job_type": job_type, "parameters": parameters})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_JOB_ID = re.compile(r"^[0-9a-f]{64}$")
_TASK_ID = re.compile(r"^([0-9a-f]{12})-s(\d{2})-t(\d{6})$")


def is_job_id(value: str) -> bool:
    """True for a well-formed job id (64 lowercase hex digits)."""
    return bool(_JOB_ID.match(value or ""))


def make_task_id(job_id: str, stage: int, index: int) -> str:
    """Human-readable task id, unique within its job and sortable by stage then index."""
    return f"{job_id[:12]}-s{stage:02d}-t{index:06d}"


def parse_task_id(task_id: str) -> tuple[str, int, int]:
    """(job id prefix, stage, index) of a task id; InvalidKeyError if malformed."""
    match = _TASK_ID.match(task_id or "")
    if not match:
        raise InvalidKeyError(f"malformed task id {echo(task_id)}")
    return match.group(1), int(match.group(2)), int(match.group(3))


# ---------------------------------------------------------------- texts bounded where they are made
# Table Storage counts a string in UTF-16 code units (2 bytes each) against its 64 KiB property, 1 MiB entity
# and 4 MiB transaction limits; its JSON wire format escapes non-ASCII as \\uXXXX (6 bytes a unit). A text of
# TEXT_BUDGET units is 16 KiB stored and at most 48 KiB on the wire: a task row's two texts, its inline
# parameters and result (each spilled to a blob past 60 KiB) stay far inside one entity.
TEXT_BUDGET = 8192
_CUT = re.compile(r"\n\[\.\.\. [0-9,]+ characters cut \.\.\.\]\n")


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units, the unit Azure counts strings in."""
    return len(text.encode("utf-16-le")) // 2


def _cut_marker(cut: int) -> str:
    return f"\n[... {cut:,} characters cut ...]\n"


@overload
def bound_text(text: str, budget: int = TEXT_BUDGET) -> str: ...
@overload
def bound_text(text: None, budget: int = TEXT_BUDGET) -> None: ...
@overload
def bound_text(text: str | None, budget: int = TEXT_BUDGET) -> str | None: ...
def bound_text(text: str | None, budget: int = TEXT_BUDGET) -> str | None:
    """``text`` if it fits ``budget`` UTF-16 units, else its head and tail around a marker saying how many
    characters were cut (never splitting a surrogate pair); idempotent. A budget too small for the marker
    keeps the head only."""
    if text is None or len(text) <= budget // 2 or utf16_len(text) <= budget:
        return text
    data = text.encode("utf-16-le")
    keep = budget - utf16_len(_cut_marker(len(text)))
    if keep < 2:
        return _decode_head(data[:2 * budget])
    head = _decode_head(data[:2 * (keep - keep // 2)])
    tail = _decode_tail(data[len(data) - 2 * (keep // 2):])
    return f"{head}{_cut_marker(len(text) - len(head) - len(tail))}{tail}"


def is_cut(text: str | None) -> bool:
    """True for a text ``bound_text`` shortened."""
    return text is not None and _CUT.search(text) is not None


def _decode_head(data: bytes) -> str:
    if len(data) >= 2 and 0xD800 <= int.from_bytes(data[-2:], "little") <= 0xDBFF:
        data = data[:-2]  # the first half of a pair whose second half was cut
    return data.decode("utf-16-le")


def _decode_tail(data: bytes) -> str:
    if len(data) >= 2 and 0xDC00 <= int.from_bytes(data[:2], "little") <= 0xDFFF:
        data = data[2:]  # the second half of a pair whose first half was cut
    return data.decode("utf-16-le")


BoundedText = Annotated[str | None, AfterValidator(bound_text)]


# ---------------------------------------------------------------- rows
class Row(BaseModel):
    """Base of table rows: ETag travels beside the data, never inside it.

    ``write_id`` is fresh on every conditional write; a writer whose reply was lost re-reads the row
    and finds its own id there (applied) or not (not applied, or someone else's write won).
    """

    model_config = ConfigDict(use_enum_values=False, validate_assignment=False)
    etag: str | None = Field(default=None, exclude=True)
    changed_at: datetime | None = Field(default=None, exclude=True)  # the service's Timestamp, when read
    write_id: str | None = None

    TEXT_FIELDS: ClassVar[tuple[str, ...]] = ()  # free texts, bounded to TEXT_BUDGET whenever stored


class PayloadRef(BaseModel):
    """Where a JSON value that was too large for its row lives."""

    container: str
    blob: str
    bytes: int


class JobRecord(Row):
    """A job: one row in the jobs table (PartitionKey = job_id, RowKey = 'job')."""

    job_id: str
    job_type: str
    status: Status = Status.QUEUED
    stage: int = 1
    total_stages: int
    stage_name: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    result_data: Any = None
    error_details: BoundedText = None
    retries: int = 0
    reopen_stage: int | None = None  # a retry under way: the stage whose failed tasks it hands back (cleared
    # once their messages are sent); a repeated retry or the sweeper finishes what a crash interrupted
    counter_shards: int | None = None  # most counter shards per stage, fixed when the job is created
    callback_url: str | None = None
    webhook: str | None = None  # pending | delivered | failed | refused
    webhook_error: BoundedText = None
    webhook_attempt: int = 0  # the delivery attempt last claimed (one chain per terminal status)
    webhook_due: datetime | None = None  # past this (plus grace) with no outcome, the sweeper resends
    traceparent: str | None = None  # W3C trace context of the submit span: the root of the job's (first) trace
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("parameters", "result_data")
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = ("error_details", "webhook_error")

    def webhook_fields(self) -> dict[str, Any]:
        """What a terminal status write sets for the webhook: a new chain, due now (or none)."""
        if not self.callback_url:
            return {"webhook": None}
        return {"webhook": "pending", "webhook_attempt": 0, "webhook_due": utcnow()}


class StageRecord(Row):
    """A stage's summary row (in the job's partition of the tasks table).

    ``shards_remaining`` reaches 0 exactly once: in the transaction of the stage's last task.
    """

    job_id: str
    stage: int
    name: str
    task_type: str
    status: Status = Status.PROCESSING
    total: int
    shards: int
    shards_remaining: int
    completed: int = 0
    failed: int = 0
    tolerated_failures: int = 0
    finisher: str | None = None
    dispatched: bool = False
    fanned_out: int = 0  # task rows written and messages sent so far (fan-out goes in chunks)
    fanout_at: datetime | None = None  # when the last chunk was fanned out (the sweeper's clock)
    plan_stored: bool = False  # the plan is a blob (fixed once; read by every chunk)
    cancelled: bool = False
    cancelled_tasks: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    schema_version: int = SCHEMA_VERSION

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ()


class ShardRecord(Row):
    """One counter shard of a stage: counts the tasks with ``index % shards == shard``."""

    job_id: str
    stage: int
    shard: int
    total: int
    remaining: int
    completed: int = 0
    failed: int = 0
    started: int = 0  # tasks of the shard claimed at least once
    retried: int = 0  # claims after a task's first (attempts beyond the first)
    progress: int = 0  # sum of the running tasks' reported percentages (ended tasks count in ``remaining``)
    errors: list[dict[str, Any]] = Field(default_factory=list)  # the shard's latest failures (bounded)
    cancelled: bool = False  # set by a cancel: every claim commits If-Match on its shard, so none lands after
    finisher: str | None = None
    schema_version: int = SCHEMA_VERSION

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("errors",)


class TaskRecord(Row):
    """A task: one row in the job's partition of the tasks table."""

    job_id: str
    task_id: str
    stage: int
    index: int
    shard: int = 0
    task_type: str
    task_version: int | None = None  # the handler version that planned (then ran) it
    status: Status = Status.QUEUED
    progress: int | None = None  # 0-100 while running, as the handler last reported
    parameters: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error_details: BoundedText = None
    error_code: str | None = None  # why it failed, for machines (errors.ErrorCode), beside error_details
    attempts: int = 0
    last_error: BoundedText = None
    text_blobs: dict[str, str] | None = None  # field -> payload blob holding its whole text, while it is cut
    time_limit_s: int | None = None
    lease_until: datetime | None = None
    end_token: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    schema_version: int = SCHEMA_VERSION

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("parameters", "result", "text_blobs")
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = ("error_details", "last_error")

    def lease_held(self, now: datetime, skew_s: float) -> bool:
        """Whether a worker may still hold this task, judged at ``now`` by the reader's clock.

        A lease is written with its claimer's clock and read with another host's: it counts as held until
        ``skew_s`` (settings.max_clock_skew_s) past its end, so clocks up to that far apart never take a
        live lease over. Every judgement of a lease goes through here (the sweeper's query through
        ``lease_cutoff``)."""
        return (self.status == Status.PROCESSING and self.lease_until is not None
                and now < self.lease_until + timedelta(seconds=skew_s))

    def same_claim(self, other: "TaskRecord") -> bool:
        """Whether ``other`` is this row under the same claim (same attempt, same lease, still processing):
        the two differ at most by the claimer's own progress writes."""
        return (self.status == other.status == Status.PROCESSING and self.attempts == other.attempts
                and self.started_at == other.started_at and self.lease_until == other.lease_until)


def lease_cutoff(now: datetime, skew_s: float) -> datetime:
    """Leases that ended before this moment (by their claimers' clocks) are over by ``now`` on any host whose
    clock is within ``skew_s`` of theirs (the query form of ``TaskRecord.lease_held``)."""
    return now - timedelta(seconds=skew_s)


class BlobInfo(BaseModel):
    """What a listing or a HEAD tells about a blob."""

    container: str
    name: str
    size: int
    last_modified: datetime
    content_type: str | None = None
    etag: str | None = None


# ---------------------------------------------------------------- messages
class Message(BaseModel):
    """Base of queue messages: small, versioned, ids only (payloads live in rows/blobs)."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    traceparent: str | None = Field(default=None, max_length=256, exclude_if=lambda v: v is None,
                                    description="W3C trace context of the span that sent it (left out when none)")

    def encode(self) -> str:
        """Text body of the message (the queue client applies host.json's encoding)."""
        return self.model_dump_json()


class StageMessage(Message):
    """Jobs queue: run stage ``stage`` of ``job_id``."""

    kind: Literal["stage"] = "stage"
    job_id: str
    stage: int = Field(ge=1, le=MAX_STAGES)
    from_task: int | None = Field(default=None, ge=0, description="a fan-out continuation: the next chunk's start")


class CompletionMessage(Message):
    """Jobs queue: every stage has ended (or one failed); write the job's final status."""

    kind: Literal["complete"] = "complete"
    job_id: str


class NotifyMessage(Message):
    """Jobs queue: deliver the job's terminal status to its callback URL (attempt n)."""

    kind: Literal["notify"] = "notify"
    job_id: str
    attempt: int = Field(default=1, ge=1)


MAX_TASKS_PER_MESSAGE = 16


class TaskMessage(Message):
    """Tasks queue: run one task, or a run of ``count`` neighbouring tasks from ``task_id`` on, in order."""

    kind: Literal["task"] = "task"
    job_id: str
    task_id: str
    attempt: int | None = Field(default=None, ge=0, description="on a poison message: the attempt that gave up (on a "
                         "message re-driven from a host-moved poison message: the attempt it was sent at)")
    count: int = Field(default=1, ge=1, le=MAX_TASKS_PER_MESSAGE, exclude_if=lambda v: v == 1,
                       description="tasks in the run: task_id and the next count - 1 of its stage")

    def singles(self) -> list["TaskMessage"]:
        """One message per task of the run (the message itself when it names one task)."""
        if self.count == 1:
            return [self]
        _, stage, first = parse_task_id(self.task_id)
        return [TaskMessage(job_id=self.job_id, task_id=make_task_id(self.job_id, stage, first + i),
                            traceparent=self.traceparent) for i in range(self.count)]


JobQueueMessage = Annotated[Union[StageMessage, CompletionMessage, NotifyMessage], Field(discriminator="kind")]
_JOB_QUEUE_ADAPTER: TypeAdapter[StageMessage | CompletionMessage | NotifyMessage] = TypeAdapter(JobQueueMessage)


def decode_job_message(body: str | bytes) -> StageMessage | CompletionMessage | NotifyMessage:
    """Parse a jobs-queue message body."""
    return _JOB_QUEUE_ADAPTER.validate_json(body)


def decode_task_message(body: str | bytes) -> TaskMessage:
    """Parse a tasks-queue message body."""
    return TaskMessage.model_validate_json(body)


# ================================================================ jobs that start by themselves (issue #13)
# Schedules and watches live in one table (SCHEDULES_TABLE), PartitionKey 'schedule' or 'watch'. The jobs
# they start carry the occasion in their parameters, so it is part of the job's identity: a schedule adds
# ``scheduled_for`` (the slot), a watch adds ``source_etag`` (the blob version).
def trigger_id(kind: str, definition: dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over the canonical definition: the same definition is the same resource."""
    return hashlib.sha256(canonical_json({"kind": kind, **definition}).encode("utf-8")).hexdigest()[:16]


class ScheduleRecord(Row):
    """A schedule: a job type, its validated parameters, an NCRONTAB expression, and its latest slot.

    ``last_slot`` only moves forward (If-Match): the instance whose write claims a slot submits it; a
    claimed slot still without ``last_job_id`` 30 s later (a crash between claim and submit) is submitted
    by the next tick, under the same job identity.
    """

    schedule_id: str
    name: str | None = None
    job_type: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    expression: str
    created_at: datetime = Field(default_factory=utcnow)
    last_slot: datetime | None = None
    claimed_at: datetime | None = None  # when last_slot was claimed (by the ticking instance's clock)
    last_job_id: str | None = None
    last_error: BoundedText = None
    skipped_slots: int = 0  # slots passed over by the latest-only policy (after downtime)
    schema_version: int = SCHEMA_VERSION

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("parameters",)
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = ("last_error",)


class WatchRecord(Row):
    """A watch: each new or changed raster blob under ``container``/``prefix`` starts one ``job_type`` job
    with ``options`` plus the blob's container, name and ETag (``source_etag``)."""

    watch_id: str
    name: str | None = None
    container: str
    prefix: str = ""
    job_type: str
    options: dict[str, Any] = Field(default_factory=dict)
    source: Literal["api", "settings"] = "api"
    created_at: datetime = Field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("options",)


class BlobArrival(BaseModel):
    """One version of one blob that was created or overwritten (from an Event Grid BlobCreated event)."""

    container: str
    blob: str
    etag: str = Field(min_length=1, description="the version: the blob's ETag, without quotes")
    size: int | None = None
    content_type: str | None = None
    event_id: str | None = None

"""Rows as Table Storage entities: where each row lives (its PartitionKey and RowKey, validated) and how it is
encoded (``to_entity`` / ``from_entity``: JSON fields as strings, free texts bounded, enums as their values).

Layout. Jobs table: one row per job (PartitionKey = job_id, RowKey 'job'); its listing table: partition 'jobs',
newest first. Tasks table: one partition per job holding its stage rows ('stage-NN'), their counter shards
('stage-NN-shard-MM') and its task rows ('task-NN-IIIIII'), so a task's end and its stage counters commit in
one entity-group transaction. Schedules table: partitions 'schedule' and 'watch',
RowKey the id. Only repositories call these; the rows themselves are models (``models.py``).
"""
from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from models import (
    JobRecord, Row, ScheduleRecord, ShardRecord, StageRecord, TaskRecord, WatchRecord, bound_text, canonical_json,
)
from repository_rules import validate_key

INDEX_PARTITION = "jobs"
SCHEDULE_PARTITION = "schedule"
WATCH_PARTITION = "watch"
_MAX_MS = 10**14


def job_index_key(created_at: datetime, job_id: str) -> str:
    """RowKey of a job's listing row: inverted creation time (ms) then the id, so a plain RowKey scan lists
    newest first."""
    return f"{_MAX_MS - int(created_at.timestamp() * 1000):014d}-{job_id}"


def stage_row_key(stage: int) -> str:
    """RowKey of a stage's summary row."""
    return f"stage-{stage:02d}"


def shard_row_key(stage: int, shard: int) -> str:
    """RowKey of one of a stage's counter shards."""
    return f"stage-{stage:02d}-shard-{shard:02d}"


def task_row_key(stage: int, index: int) -> str:
    """RowKey of a task row: tasks sort by stage, then index."""
    return f"task-{stage:02d}-{index:06d}"


def row_keys(row: Row) -> tuple[str, str]:
    """(PartitionKey, RowKey) of any row."""
    if isinstance(row, JobRecord):
        return row.job_id, "job"
    if isinstance(row, StageRecord):
        return row.job_id, stage_row_key(row.stage)
    if isinstance(row, ShardRecord):
        return row.job_id, shard_row_key(row.stage, row.shard)
    if isinstance(row, TaskRecord):
        return row.job_id, task_row_key(row.stage, row.index)
    if isinstance(row, ScheduleRecord):
        return SCHEDULE_PARTITION, row.schedule_id
    if isinstance(row, WatchRecord):
        return WATCH_PARTITION, row.watch_id
    raise TypeError(type(row).__name__)


def to_entity(row: Row) -> dict[str, Any]:
    """Table entity of a row: JSON fields become strings, free texts are bounded (``bound_text``: a row
    copied with a longer text is cut here, where it is stored); None values are left out."""
    pk, rk = row_keys(row)
    data = row.model_dump(mode="python", exclude={"etag"})
    entity: dict[str, Any] = {"PartitionKey": validate_key(pk), "RowKey": validate_key(rk)}
    for name, value in data.items():
        if name in row.TEXT_FIELDS:
            entity[name] = bound_text(value)
        elif name in row.JSON_FIELDS:
            entity[name] = canonical_json(value) if value is not None else None
        elif isinstance(value, StrEnum):
            entity[name] = value.value
        else:
            entity[name] = value
    return {k: v for k, v in entity.items() if v is not None}


def from_entity(cls: type[Row], entity: dict[str, Any], etag: str | None = None,
                changed_at: datetime | None = None) -> Row:
    """Inverse of ``to_entity`` (spilled payloads are resolved by the repository first)."""
    data = {k: v for k, v in dict(entity).items() if k not in ("PartitionKey", "RowKey", "Timestamp")}
    for name in cls.JSON_FIELDS:
        if isinstance(data.get(name), str):
            data[name] = json.loads(data[name])
    return cls.model_validate({**data, "etag": etag, "changed_at": changed_at})

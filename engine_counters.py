"""The atomic end-of-stage arithmetic: counter shards, and what one task's end does to them (pure)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from errors import ConflictError
from models import ShardRecord, StageRecord, Status, bound_text, utcnow


def shard_count(tasks: int, most: int) -> int:
    """Counter shards for a stage of ``tasks``: about sqrt(tasks), at most ``most``.

    Few tasks per shard means many stage-row updates (one per shard end) that collide; many per
    shard means finishers collide on the shard. sqrt balances the two.
    """
    return max(1, min(most, round(math.sqrt(tasks))))


MAX_SHARD_ERRORS = 3
MAX_ERROR_CHARS = 300  # UTF-16 units of each error a shard keeps (head and tail, ``bound_text``)


@dataclass(frozen=True)
class Change:
    """One task's effect on its counter shard: a first start, an end, or both."""

    shard: int
    started: int = 0  # 1 on the task's first claim
    retried: int = 0  # 1 on a later claim (another attempt)
    ended: Status | None = None  # completed / failed
    task_id: str = ""
    error: str | None = None  # a failure, or the transient error a task was handed back with
    error_code: str | None = None  # the failure's code (errors.ErrorCode)
    attempt: int = 0
    progress: int = 0  # change of the task's reported percentage (minus its last one when it ends)


def apply_changes(stage: StageRecord, shards: dict[int, ShardRecord], changes: list[Change],
                  token: str) -> tuple[list[ShardRecord], StageRecord | None]:
    """The changed shard rows, and the stage row when a shard reached zero, after a group of changes.

    A shard that reaches zero names ``token`` its finisher and folds its totals into the stage row; the
    stage ends (``completed``, or ``failed`` past the tolerated failures) when its last shard does.
    ConflictError when a change would end more tasks than a shard has left (a stale or doubled change).
    """
    after: dict[int, ShardRecord] = {}
    now = utcnow()
    for change in changes:
        shard = after.get(change.shard) or shards[change.shard].model_copy(deep=True)
        shard.started += change.started
        shard.retried += change.retried
        shard.progress = max(0, shard.progress + change.progress)
        if change.ended is not None:
            if shard.remaining <= 0:
                raise ConflictError(f"shard {shard.shard} of stage {shard.stage} has no task left to end")
            shard.remaining -= 1
            shard.completed += change.ended == Status.COMPLETED
            shard.failed += change.ended == Status.FAILED
            if shard.remaining == 0:
                shard.finisher = token
        if change.error and change.ended != Status.COMPLETED:
            entry = {"task_id": change.task_id, "error": bound_text(change.error, MAX_ERROR_CHARS),
                     "at": now.isoformat(), "status": (change.ended or Status.QUEUED).value, "attempts": change.attempt}
            if change.error_code:
                entry["error_code"] = change.error_code
            shard.errors = ([entry] + [e for e in shard.errors if e.get("task_id") != change.task_id])
            shard.errors = shard.errors[:MAX_SHARD_ERRORS]
        after[change.shard] = shard
    ended = [s for s in after.values() if s.remaining == 0 and shards[s.shard].remaining > 0]
    if not ended:
        return list(after.values()), None
    stage_after = stage.model_copy(update={
        "shards_remaining": stage.shards_remaining - len(ended),
        "completed": stage.completed + sum(s.completed for s in ended),
        "failed": stage.failed + sum(s.failed for s in ended)})
    if stage_after.shards_remaining == 0:
        stage_after.status = Status.FAILED if stage_after.failed > stage.tolerated_failures else Status.COMPLETED
        stage_after.finisher = token
        stage_after.ended_at = now
    return list(after.values()), stage_after


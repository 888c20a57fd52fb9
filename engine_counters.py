"""The atomic end-of-stage arithmetic: counter shards, and what one task's end does to them (pure)."""
from __future__ import annotations

import math

from errors import ConflictError
from models import ShardRecord, StageRecord, Status, utcnow


def shard_count(tasks: int, most: int) -> int:
    """Counter shards for a stage of ``tasks``: about sqrt(tasks), at most ``most``.

    Few tasks per shard means many stage-row updates (one per shard end) that collide; many per
    shard means finishers collide on the shard. sqrt balances the two.
    """
    return max(1, min(most, round(math.sqrt(tasks))))


def count_end(shard: ShardRecord, stage: StageRecord, status: Status,
              token: str) -> tuple[ShardRecord, StageRecord | None]:
    """Counters after one task ends; the stage row changes only when the shard reaches zero.

    A stage ends ``failed`` when more of its tasks failed than it tolerates, else ``completed``.
    """
    if shard.remaining <= 0:
        raise ConflictError(f"shard {shard.shard} of stage {shard.stage} has no task left to end")
    done = {"completed": shard.completed + (status == Status.COMPLETED),
            "failed": shard.failed + (status == Status.FAILED)}
    shard_after = shard.model_copy(update={"remaining": shard.remaining - 1, **done})
    if shard_after.remaining > 0:
        return shard_after, None
    shard_after.finisher = token
    remaining = stage.shards_remaining - 1
    stage_after = stage.model_copy(update={
        "shards_remaining": remaining,
        "completed": stage.completed + shard_after.completed,
        "failed": stage.failed + shard_after.failed})
    if remaining == 0:
        stage_after.status = Status.FAILED if stage_after.failed > stage.tolerated_failures else Status.COMPLETED
        stage_after.finisher = token
        stage_after.ended_at = utcnow()
    return shard_after, stage_after

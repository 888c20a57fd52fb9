"""Unit tests of the pure heart of the stage decision: counter shards and ``apply_changes`` (what the engine
calls with each group of task ends)."""
from __future__ import annotations

import itertools
import random

import pytest

from engine_counters import Change, apply_changes, shard_count
from errors import ConflictError
from models import ShardRecord, StageRecord, Status


def stage_of(total: int, shards: int, tolerated: int = 0) -> tuple[StageRecord, list[ShardRecord]]:
    """A fresh stage of ``total`` tasks over ``shards`` shards, as the engine writes it."""
    rows = [ShardRecord(job_id="j", stage=1, shard=s, total=len(range(s, total, shards)),
                        remaining=len(range(s, total, shards))) for s in range(shards)]
    stage = StageRecord(job_id="j", stage=1, name="s", task_type="t", total=total, shards=shards,
                        shards_remaining=shards, tolerated_failures=tolerated)
    return stage, rows


def end_one(shard: ShardRecord, stage: StageRecord, status: Status,
            token: str) -> tuple[ShardRecord, StageRecord | None]:
    """One task of ``shard`` ends with ``status``, as the engine applies it: a group of one change."""
    shards, stage_after = apply_changes(stage, {shard.shard: shard}, [Change(shard.shard, ended=status)], token)
    return shards[0], stage_after


def end_all(stage: StageRecord, shards: list[ShardRecord], outcomes: dict[int, Status],
            order: list[int]) -> tuple[StageRecord, list[str]]:
    """End tasks in ``order`` (task i lives in shard i % n); returns the stage and who ended it."""
    enders = []
    for index in order:
        shard = shards[index % stage.shards]
        shard_after, stage_after = end_one(shard, stage, outcomes.get(index, Status.COMPLETED), f"t{index}")
        shards[index % stage.shards] = shard_after
        if stage_after is not None:
            stage = stage_after
            if stage.status in (Status.COMPLETED, Status.FAILED):
                enders.append(f"t{index}")
    return stage, enders


def test_shard_count_is_about_the_square_root_within_bounds():
    assert [shard_count(n, 32) for n in (1, 2, 4, 10, 100, 1000, 100_000)] == [1, 1, 2, 3, 10, 32, 32]
    assert shard_count(10_000, 64) == 64 and shard_count(0, 32) == 1


@pytest.mark.parametrize("total, shards", [(1, 1), (7, 3), (100, 10), (101, 10), (12, 12)])
def test_exactly_one_end_takes_the_stage_to_zero_in_any_order(total, shards):
    for seed in range(20):
        order = list(range(total))
        random.Random(seed).shuffle(order)
        stage, rows = stage_of(total, shards)
        stage, enders = end_all(stage, rows, {}, order)
        assert len(enders) == 1 and stage.finisher == enders[0]
        assert stage.status == Status.COMPLETED and stage.shards_remaining == 0
        assert (stage.completed, stage.failed) == (total, 0) and stage.ended_at is not None


def test_the_stage_row_changes_only_when_a_shard_reaches_zero():
    stage, rows = stage_of(10, 2)
    shard_after, stage_after = end_one(rows[0], stage, Status.COMPLETED, "a")
    assert stage_after is None and shard_after.remaining == 4 and shard_after.finisher is None
    rows[0] = shard_after.model_copy(update={"remaining": 1})
    shard_after, stage_after = end_one(rows[0], stage, Status.FAILED, "b")
    assert shard_after.remaining == 0 and shard_after.finisher == "b"
    assert stage_after.shards_remaining == 1 and stage_after.status == Status.PROCESSING


@pytest.mark.parametrize("failed, tolerated, status", [
    (0, 0, Status.COMPLETED), (1, 0, Status.FAILED), (2, 2, Status.COMPLETED), (3, 2, Status.FAILED),
])
def test_failures_beyond_the_tolerated_number_fail_the_stage(failed, tolerated, status):
    stage, rows = stage_of(9, 3, tolerated)
    outcomes = {i: Status.FAILED for i in range(failed)}
    stage, _ = end_all(stage, rows, outcomes, list(range(9)))
    assert stage.status == status and (stage.completed, stage.failed) == (9 - failed, failed)


def test_a_shard_with_nothing_left_refuses_another_end():
    stage, rows = stage_of(2, 2)
    done, _ = end_one(rows[0], stage, Status.COMPLETED, "a")
    with pytest.raises(ConflictError, match="no task left"):
        end_one(done, stage, Status.COMPLETED, "again")


def test_counts_add_up_for_every_mix_of_outcomes():
    for outcomes in itertools.product((Status.COMPLETED, Status.FAILED), repeat=6):
        stage, rows = stage_of(6, 2, tolerated=6)
        stage, enders = end_all(stage, rows, dict(enumerate(outcomes)), [5, 0, 3, 1, 4, 2])
        assert stage.completed + stage.failed == 6 and len(enders) == 1
        assert stage.failed == sum(o == Status.FAILED for o in outcomes)


@pytest.mark.parametrize("group", [2, 5, 24])
def test_groups_of_ends_count_as_the_same_ends_one_by_one(group):
    """The engine applies a group commit's ends together: the stage still ends once, with the same counts."""
    for seed in range(10):
        order = list(range(50))
        random.Random(seed).shuffle(order)
        stage, rows = stage_of(50, 7, tolerated=50)
        shards = {row.shard: row for row in rows}
        outcomes = {i: Status.FAILED for i in order[:seed]}
        enders = []
        for start in range(0, len(order), group):
            changes = [Change(i % 7, ended=outcomes.get(i, Status.COMPLETED)) for i in order[start:start + group]]
            changed, stage_after = apply_changes(stage, shards, changes, f"g{start}")
            shards.update({row.shard: row for row in changed})
            if stage_after is not None:
                stage = stage_after
                enders += [f"g{start}"] if stage.status == Status.COMPLETED else []
        assert enders == [stage.finisher] and stage.shards_remaining == 0
        assert (stage.completed, stage.failed) == (50 - seed, seed)

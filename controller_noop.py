"""noop: one stage of n tasks that do nothing, to measure what the engine and its storage cost.

Each ``noop`` task returns ``{"i": index}``; the job's result is only their count, so a job of
100,000 tasks has a small result. Use it to see how fast a deployment fans out, runs and finishes
tasks (``benchmarks/bench_engine.py --scale`` does). ``n`` goes up to models.TASK_INDEX_LIMIT (999,999);
a submit over the deployment's ``MAX_TASKS_PER_STAGE`` setting is refused, naming the setting.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from base_controller import JobController, JobParameters, Stage, TaskContext, TaskHandler, TaskOutcome
from config import Settings
from errors import ParameterValidationError
from models import TASK_INDEX_LIMIT


class NoopParameters(JobParameters):
    """Parameters of a noop job."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(default=100, ge=1, le=TASK_INDEX_LIMIT,
                   description="Tasks in the stage (at most the MAX_TASKS_PER_STAGE setting, 100,000 by default).")


class NoopTaskParameters(BaseModel):
    """A noop task takes nothing (its index is in its id)."""

    model_config = ConfigDict(extra="forbid")


class NoopResult(BaseModel):
    """What a noop task leaves: its index."""

    i: int


def plan_noops(p: NoopParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    """n empty task parameter sets."""
    return [{} for _ in range(p.n)]


def noop(p: NoopTaskParameters, ctx: TaskContext) -> NoopResult:
    """Does nothing; returns its index."""
    return NoopResult(i=ctx.index)


def aggregate(p: NoopParameters, outcomes: dict[int, list[TaskOutcome]]) -> dict[str, int]:
    """Only how many tasks ran (a result that stays small at any n; no task rows are read for it)."""
    return {"task_count": p.n}


class NoopController(JobController[NoopParameters]):
    """noop's controller: ``n`` is also checked against the MAX_TASKS_PER_STAGE setting at submit."""

    def validate(self, raw: object, settings: Settings) -> NoopParameters:
        """As ``JobController.validate``; an ``n`` over the deployment's stage limit is refused now, not at
        planning (where the job would fail)."""
        params = super().validate(raw, settings)
        if params.n > settings.max_tasks_per_stage:
            message = (f"n: {params.n:,} tasks exceed this deployment's limit of {settings.max_tasks_per_stage:,} "
                       f"per stage (MAX_TASKS_PER_STAGE)")
            raise ParameterValidationError(f"invalid parameters for {self.job_type}: {message}",
                                           errors=[{"field": "n", "message": message, "type": "too_many_tasks"}])
        return params


NOOP = NoopController(
    job_type="noop",
    description="One stage of n tasks that do nothing: measures the engine and its storage.",
    parameters_model=NoopParameters,
    stages=(Stage("noops", "noop", plan_noops, "Each task returns its index.", parallelism="n tasks"),),
    aggregate=aggregate,
    aggregates_outcomes=False,  # completing a job of any size reads no task rows
)

HANDLERS = (TaskHandler("noop", NoopTaskParameters, noop, "Does nothing; returns its index."),)

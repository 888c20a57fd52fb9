"""hello_world: two stages of n parallel tasks with lineage; the proof that the engine works.

Stage 1 ``hello_worlds``: task i greets. Stage 2 ``worlds_reply``: task i answers stage-1 task i.
``fail_indices`` makes chosen stage-1 tasks fail on purpose (to see failure handling),
``transient_failures`` makes every stage-1 task raise a transient error on its first k attempts (to
see retries with backoff), and ``sleep_ms`` makes every task take that long (to watch progress), at
most ``SLEEP_SHARE`` of the tasks' time limit, so that a sleeping task never outlives its lease.
"""
from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from base_controller import (
    JobController, JobParameters, Stage, TaskContext, TaskHandler, TaskOutcome, outcomes_in_order,
)
from config import Settings
from errors import ParameterValidationError, TaskError, TransientError

SLEEP_SHARE = 0.8  # of the task time limit; the rest is the engine's own reads and writes around the sleep


class HelloWorldParameters(JobParameters):
    """Parameters of a hello_world job."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(default=3, ge=1, le=1000, description="Tasks per stage.")
    message: str = Field(default="hello", min_length=1, max_length=200, description="Word to greet with.")
    fail_indices: list[int] = Field(default_factory=list, max_length=1000,
                                    description="Stage-1 task indices that fail on purpose.")
    sleep_ms: int = Field(default=0, ge=0, le=600_000, description="Time each task sleeps; at most 80% of the "
                          "tasks' time limit (TASK_TIME_LIMIT_S, 300 s by default).")
    transient_failures: int = Field(default=0, ge=0, le=100,
                                    description="Transient errors each stage-1 task raises before succeeding.")


class GreetingParameters(BaseModel):
    """Parameters of one hello_greeting task."""

    message: str
    fail: bool = False
    sleep_ms: int = 0
    transient_failures: int = 0


class ReplyParameters(BaseModel):
    """Parameters of one hello_reply task: the stage-1 task it answers."""

    message: str
    previous_task_id: str
    previous_result: dict[str, Any]
    sleep_ms: int = 0


class Greeting(BaseModel):
    """What a hello_greeting task leaves."""

    greeting: str


class Reply(BaseModel):
    """What a hello_reply task leaves."""

    reply: str


def plan_greetings(p: HelloWorldParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    """n greeting tasks."""
    fail = set(p.fail_indices)
    return [{"message": p.message, "fail": i in fail, "sleep_ms": p.sleep_ms,
             "transient_failures": p.transient_failures} for i in range(p.n)]


def plan_replies(p: HelloWorldParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    """One reply task per stage-1 task, carrying that task's id and result (lineage)."""
    return [{"message": p.message, "previous_task_id": o.task_id, "previous_result": o.result,
             "sleep_ms": p.sleep_ms} for o in outcomes_in_order(previous)]


def sleep_with_progress(ms: int, ctx: TaskContext) -> None:
    """Sleep ``ms``, reporting progress as it goes (the engine throttles the writes)."""
    steps = max(1, ms // 250)
    for step in range(steps):
        time.sleep(ms / 1000 / steps)
        ctx.progress(100 * (step + 1) / steps)


def greet(p: GreetingParameters, ctx: TaskContext) -> Greeting:
    """Stage 1 task."""
    sleep_with_progress(p.sleep_ms, ctx)
    if ctx.attempt <= p.transient_failures:
        raise TransientError(f"simulated transient error on attempt {ctx.attempt} (transient_failures)")
    if p.fail:
        raise TaskError(f"task {ctx.task_id} was asked to fail (fail_indices)")
    return Greeting(greeting=f"{p.message} from {ctx.task_id}!")


def reply(p: ReplyParameters, ctx: TaskContext) -> Reply:
    """Stage 2 task."""
    sleep_with_progress(p.sleep_ms, ctx)
    return Reply(reply=f"{p.message} {p.previous_task_id} from {ctx.task_id}")


def aggregate(p: HelloWorldParameters, outcomes: dict[int, list[TaskOutcome]]) -> dict[str, Any]:
    """Greetings and replies in index order."""
    greetings = [o.result["greeting"] for o in outcomes_in_order(outcomes.get(1, []))]
    replies = [o.result["reply"] for o in outcomes_in_order(outcomes.get(2, []))]
    return {"greetings": greetings, "replies": replies, "task_count": len(greetings) + len(replies)}


class HelloWorldController(JobController[HelloWorldParameters]):
    """hello_world's controller: parameters are also checked against the task time limit (a setting)."""

    def validate(self, raw: object, settings: Settings) -> HelloWorldParameters:
        """As ``JobController.validate``; a ``sleep_ms`` that would outlast a task's lease is refused too."""
        params = super().validate(raw, settings)
        limit_s = min(h.time_limit_s or settings.task_time_limit_s for h in HANDLERS)
        most = int(limit_s * 1000 * SLEEP_SHARE)
        if params.sleep_ms > most:
            message = (f"sleep_ms: {params.sleep_ms} ms would outlast the tasks' {limit_s} s time limit "
                       f"(TASK_TIME_LIMIT_S); at most {most} ms")
            raise ParameterValidationError(f"invalid parameters for {self.job_type}: {message}",
                                           errors=[{"field": "sleep_ms", "message": message,
                                                    "type": "exceeds_time_limit"}])
        return params


HELLO_WORLD = HelloWorldController(
    job_type="hello_world",
    description="Two stages of n parallel tasks; stage 2 answers stage 1 task by task.",
    parameters_model=HelloWorldParameters,
    stages=(
        Stage("hello_worlds", "hello_greeting", plan_greetings, "Each task greets."),
        Stage("worlds_reply", "hello_reply", plan_replies, "Each task answers one greeting."),
    ),
    aggregate=aggregate,
)

HANDLERS = (
    TaskHandler("hello_greeting", GreetingParameters, greet, "Returns a greeting."),
    TaskHandler("hello_reply", ReplyParameters, reply, "Returns a reply to a greeting."),
)

"""Ending a stage and a job: the one message that follows an ended stage (``advance``), then completion: the
job's final status from its stages, and its result from the stages it aggregates.

``advance`` runs in the one task-end transaction's writer that took the stage's shards to zero; completion
runs on the completion message it sends. Both are safe to repeat (a terminal job is left as it is, and the
job row moves with a conditional write).
"""
from __future__ import annotations

import logging
from typing import Any

import engine_faults
import engine_jobs
import engine_tracing
from base_controller import TaskOutcome
from controller_factory import get_controller
from engine_context import EngineContext
from engine_jobs import describe, finish_job, next_message
from errors import TransientError
from logs import log_event
from models import TERMINAL, TEXT_BUDGET, CompletionMessage, StageRecord, Status, bound_text, is_cut

logger = logging.getLogger(__name__)
MAX_ERROR_TASKS_LISTED = 20
SUMMARY_HEADROOM = 1024  # UTF-16 units of a failure summary kept for its own words and the task ids


@engine_tracing.traced("stage.end")
def advance(ctx: EngineContext, stage: StageRecord) -> None:
    """Send the one message that follows an ended stage: next stage, or completion."""
    job = ctx.store.get_job(stage.job_id)
    if job is None or job.status in TERMINAL:
        return
    message = next_message(job, stage.stage, stage.status)
    ctx.queues.jobs.send(message)
    nxt = "completion" if isinstance(message, CompletionMessage) else f"stage {message.stage}"
    engine_faults.point("advance_message_sent")
    log_event(logger, "stage_advanced", job_id=job.job_id, stage=stage.stage, status=stage.status,
              next=nxt, finisher=stage.finisher)
    engine_tracing.annotate(stage_status=stage.status, stage_next=nxt)


@engine_tracing.consumer("job.complete")
def complete(ctx: EngineContext, msg: CompletionMessage) -> None:
    """Write the job's final status: failed (naming the failed tasks) or completed with result_data."""
    job = ctx.store.get_job(msg.job_id)
    if job is None or job.status in TERMINAL:
        return
    controller = get_controller(job.job_type)
    stages = {s.stage: s for s in ctx.store.stage_rows(job.job_id)[0]}
    failed = [s for s in stages.values() if s.status == Status.FAILED]
    last = stages.get(controller.total_stages)
    if failed:
        finish_job(ctx, job.job_id, Status.FAILED, error=failure_summary(ctx, failed[0]))
    elif last is not None and last.status == Status.COMPLETED:
        outcomes: dict[int, list[TaskOutcome]] = {}
        tolerated: list[dict[str, Any]] = []  # {"task_id": str, "error": str | None}
        read = (set(controller.outcome_stages or stages) if controller.aggregates_outcomes else set()) & set(stages)
        rows = engine_jobs.outcomes(ctx.store, job.job_id) if read == set(stages) else [  # all stages: one query
            o for number in sorted(read) for o in engine_jobs.outcomes(ctx.store, job.job_id, number)]
        for o in rows:
            if o.status == Status.COMPLETED:
                outcomes.setdefault(o.stage, []).append(o)
            else:
                tolerated.append({"task_id": o.task_id, "error": o.error_details})
        for number in sorted(n for n in set(stages) - read if stages[n].failed):  # only the failed ones
            tolerated += [{"task_id": t.task_id, "error": t.error_details}
                          for t in ctx.store.list_tasks(job.job_id, number, status=Status.FAILED, resolve=False)]
        tolerated.sort(key=lambda t: t["task_id"])
        try:
            params = controller.parameters_model.model_validate(job.parameters)
            result = controller.aggregate(params, outcomes)
        except TransientError:
            raise
        except Exception as exc:  # deterministic: fail now with a readable error, don't loop to poison
            finish_job(ctx, job.job_id, Status.FAILED,
                              error=f"aggregating results failed: {describe(exc)}")
            return
        if tolerated:
            result = {**result, "failed_tasks": tolerated} if isinstance(result, dict) else \
                {"result": result, "failed_tasks": tolerated}
        engine_faults.point("completion_aggregated")
        finish_job(ctx, job.job_id, Status.COMPLETED, result=result)
    else:
        log_event(logger, "completion_ignored", logging.WARNING, job_id=job.job_id,
                  reason="no stage failed and the last stage has not completed")


def failure_summary(ctx: EngineContext, stage: StageRecord) -> str:
    """What failed a stage: its failed tasks and their errors (the first MAX_ERROR_TASKS_LISTED), each cut to
    an equal share of the job row's text budget so the summary always fits (the tasks keep theirs whole)."""
    failed = ctx.store.list_tasks(stage.job_id, stage.stage, status=Status.FAILED, resolve=False)
    shown = failed[:MAX_ERROR_TASKS_LISTED]
    share = (TEXT_BUDGET - SUMMARY_HEADROOM) // max(1, len(shown))
    errors = [bound_text(t.error_details, share) for t in shown]
    listed = "; ".join(f"{t.task_id}: {e}" for t, e in zip(shown, errors, strict=True))
    more = f"; and {len(failed) - MAX_ERROR_TASKS_LISTED} more" if len(failed) > MAX_ERROR_TASKS_LISTED else ""
    whole = (f" (each task's whole error: GET /api/jobs/{stage.job_id}/tasks?status=failed)"
             if any(is_cut(e) for e in errors) else "")
    return bound_text(f"stage {stage.stage} ({stage.name}) failed: {stage.failed} of {stage.total} tasks failed: "
                      f"{listed}{more}{whole}")

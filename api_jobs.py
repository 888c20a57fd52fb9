"""The HTTP API as plain functions: request parts in, (status code, JSON body) out.

``function_app.py`` adapts these to ``func.HttpRequest``/``HttpResponse``; nothing here knows about
the Functions runtime, so the same code serves Azure, ``func start`` and ``local_host.py``.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

import api_listing
import engine_admin
import engine_faults
from controller_factory import get_controller
from errors import BadRequestError, NotFoundError, OrchestratorError, PayloadTooLargeError, http_status_for
from logs import log_event
from api_models import JobStatusResponse, StageStatus, SubmitResponse, TaskCounts, TaskErrorSummary
from models import TERMINAL, JobRecord, StageMessage, Status, is_job_id, make_job_id
from services_webhook import check_url
from task_manager import Engine

logger = logging.getLogger(__name__)
Response = tuple[int, dict[str, Any]]
RECENT_ERRORS = 5


def parse_json_object(body: bytes, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx error saying what is wrong with it."""
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        value = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("request body is nested too deeply") from None
    if not isinstance(value, dict):
        kind = "empty" if value is None else f"a JSON {type(value).__name__}"
        raise BadRequestError(f"request body must be a JSON object of parameters (use {{}} for defaults), "
                              f"got {kind}")
    return value


def submit(engine: Engine, job_type: str, body: bytes, base_url: str, callback_url: str | None = None) -> Response:
    """POST /api/jobs/submit/{job_type}: 202 for a new job, 200 for an existing one."""
    controller = get_controller(job_type)
    params = controller.validate(parse_json_object(body, engine.settings.max_request_bytes), engine.settings)
    if callback_url:
        check_url(callback_url, engine.settings.webhook_allow_loopback)
        if not engine.settings.webhook_secret.get_secret_value():
            raise BadRequestError("callback_url needs webhooks configured: set WEBHOOK_SECRET on the Function App")
    canonical = params.model_dump(mode="json")
    job_id = make_job_id(job_type, canonical)
    store = engine.store
    job = store.get_job(job_id)
    created = False
    if job is None:
        job = store.create_job(JobRecord(job_id=job_id, job_type=job_type, total_stages=controller.total_stages,
                                         stage_name=controller.stage(1).name, parameters=canonical,
                                         callback_url=callback_url or None))
        if job is not None:
            store.index_job(job)
            engine_faults.point("job_row_written")
            engine.repos.jobs_queue.send(StageMessage(job_id=job_id, stage=1))
            created = True
            log_event(logger, "job_submitted", job_id=job_id, job_type=job_type)
        else:
            job = store.get_job(job_id)
    if job is None:  # created by a concurrent identical request and not readable yet
        raise NotFoundError(f"job {job_id} could not be read back; retry")
    hints = []
    if job.status == Status.FAILED:
        hints.append(f"this job failed; POST {base_url}/api/jobs/{job.job_id}/retry re-runs its failed tasks")
    if not created and callback_url and callback_url != job.callback_url:
        hints.append("callback_url ignored: this job already exists (a callback is set when a job is created)")
    hint = " ".join(hints) or None
    body_out = SubmitResponse(job_id=job.job_id, job_type=job.job_type, status=job.status, stage=job.stage,
                              total_stages=job.total_stages, created=created, hint=hint,
                              status_url=f"{base_url}/api/jobs/status/{job.job_id}")
    return (202 if created else 200), body_out.model_dump(mode="json", exclude_none=True)


def status(engine: Engine, job_id: str, verbose: bool = False, limit: int = 100,
           continuation: str | None = None) -> Response:
    """GET /api/jobs/status/{job_id}: the job, its stages (timings, counts, attempts), progress."""
    job = engine.store.get_job(job_id) if is_job_id(job_id) else None
    if job is None:
        raise NotFoundError(f"no job with id {job_id!r}")
    controller = get_controller(job.job_type)
    stage_rows = {s.stage: s for s in engine.store.stage_rows(job_id)[0]}
    tasks = engine.store.task_summaries(job_id)
    stages: list[StageStatus] = []
    for number, definition in enumerate(controller.stages, start=1):
        mine = [t for t in tasks if t["stage"] == number]
        counts = TaskCounts(total=len(mine), **{s.value: sum(t["status"] == s.value for t in mine) for s in Status})
        row = stage_rows.get(number)
        shown = Status.QUEUED if row is None else (
            Status.CANCELLED if row.cancelled and row.status not in TERMINAL else row.status)
        ended = row.ended_at if row is not None and row.status in TERMINAL else None
        stages.append(StageStatus(
            stage=number, name=definition.name, status=shown, tasks=counts,
            attempts=sum(t.get("attempts") or 0 for t in mine),
            started_at=row.created_at if row else None, ended_at=ended,
            duration_s=round((ended - row.created_at).total_seconds(), 3) if ended else None))
    totals = TaskCounts(**{f: sum(getattr(s.tasks, f) for s in stages) for f in TaskCounts.model_fields})
    with_errors = sorted((t for t in tasks if t.get("error_details") or t.get("last_error")),
                         key=lambda t: str(t.get("ended_at") or ""), reverse=True)[:RECENT_ERRORS]
    recent = [TaskErrorSummary(task_id=t["task_id"], status=t["status"], attempts=t.get("attempts") or 0,
                               error=t.get("error_details") or t.get("last_error")) for t in with_errors]
    response = JobStatusResponse(
        job_id=job.job_id, job_type=job.job_type, status=job.status, stage=job.stage,
        total_stages=job.total_stages, stage_name=job.stage_name, parameters=job.parameters, tasks=totals,
        stages=stages, progress=progress(job.status, stages), attempts=sum(s.attempts for s in stages),
        retries=job.retries, recent_errors=recent,
        result_data=job.result_data if job.status == Status.COMPLETED else None,
        error_details=job.error_details, created_at=job.created_at, updated_at=job.updated_at,
        webhook=job.webhook, webhook_error=job.webhook_error,
        task_page=api_listing.task_page(engine, job_id, None, None, limit, continuation) if verbose else None)
    return 200, response.model_dump(mode="json", exclude_none=True)


def progress(job_status: Status, stages: list[StageStatus]) -> float:
    """0-100: each stage weighs the same; within a stage, the share of its known tasks that ended."""
    if job_status == Status.COMPLETED:
        return 100.0
    done = 0.0
    for s in stages:
        if s.status == Status.COMPLETED:
            done += 1
        elif s.tasks.total:
            done += (s.tasks.completed + s.tasks.failed + s.tasks.cancelled) / s.tasks.total
    return round(100 * done / max(1, len(stages)), 1)


def retry(engine: Engine, job_id: str) -> Response:
    """POST /api/jobs/{job_id}/retry: 202 and the job's status; 409 unless the job failed."""
    engine_admin.retry(engine, job_id)
    return 202, status(engine, job_id)[1]


def cancel(engine: Engine, job_id: str) -> Response:
    """POST /api/jobs/{job_id}/cancel: 200 and the job's status; 409 if it already ended."""
    engine_admin.cancel(engine, job_id)
    return 200, status(engine, job_id)[1]


def respond(call: Callable[[], Response]) -> Response:
    """Run an API call; domain errors become their 4xx/5xx JSON, anything else a logged 500 JSON."""
    try:
        return call()
    except OrchestratorError as exc:
        code = http_status_for(exc)
        if code >= 500:
            log_event(logger, "api_error", logging.ERROR, exc_info=True, error=exc.message)
        return code, exc.to_body()
    except Exception:  # never a stack trace to the client
        log_event(logger, "api_crash", logging.ERROR, exc_info=True)
        return 500, {"error": "internal_error", "message": "internal error; see the function logs"}

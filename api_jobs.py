"""The HTTP API as plain functions: request parts in, (status code, JSON body) out.

``function_app.py`` adapts these to ``func.HttpRequest``/``HttpResponse``; nothing here knows about
the Functions runtime, so the same code serves Azure, ``func start`` and ``local_host.py``.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

import api_listing
import engine_jobs
import engine_links
import engine_status
from api_models import SubmitResponse
from errors import BadRequestError, OrchestratorError, PayloadTooLargeError, http_status_for
from logs import log_event
from models import Status
from task_manager import Engine

logger = logging.getLogger(__name__)
Response = tuple[int, dict[str, Any]]
MAX_INT_DIGITS = 100  # far beyond any parameter; Python refuses str -> int past 4300 digits anyway


def _json_int(text: str) -> int:
    """An integer of the body; a huge one is a 400 naming it (past 4300 digits json.loads raised a bare
    ValueError: a 500)."""
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise BadRequestError(f"request body holds an integer of {digits} digits; at most {MAX_INT_DIGITS} are "
                              "accepted")
    return int(text)


def parse_json_object(body: bytes, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx error saying what is wrong with it."""
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        value = json.loads(body.decode("utf-8"), parse_int=_json_int) if body.strip() else None
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
    engine.controller(job_type)  # an unknown job type is a 404 before the body is read
    parameters = parse_json_object(body, engine.settings.max_request_bytes)
    submitted = engine.submit(job_type, parameters, callback_url)
    job, created = submitted.job, submitted.created
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
    """GET /api/jobs/status/{job_id}: the job, its stages (timings, counts, attempts), progress; read links
    (``href``, ``expires_at``) beside the blob URLs of its result and tasks, minted now."""
    job = engine_jobs.require_job(engine.store, job_id)
    document = engine_status.status_document(engine.store, job)
    if verbose:
        document.task_page = api_listing.task_page(engine, job_id, None, None, limit, continuation)
    return 200, engine_links.sign_status(engine.io.rasters, document.model_dump(mode="json", exclude_none=True))


def retry(engine: Engine, job_id: str) -> Response:
    """POST /api/jobs/{job_id}/retry: 202 and the job's status; 409 unless the job failed."""
    engine.retry(job_id)
    return 202, status(engine, job_id)[1]


def cancel(engine: Engine, job_id: str) -> Response:
    """POST /api/jobs/{job_id}/cancel: 200 and the job's status; 409 if it already ended."""
    engine.cancel(job_id)
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
        crash = OrchestratorError("internal error; see the function logs")
        return http_status_for(crash), crash.to_body()

"""Completion webhooks: deliver a job's final status to its callback URL, signed, with retries.

The terminal status write marks the webhook ``pending`` (same conditional write); a ``notify``
message then delivers it: checked target, HMAC-SHA256 signature, retried with backoff on failure,
``delivered`` / ``failed`` / ``refused`` recorded on the job. The sweeper re-sends pending ones.
"""
from __future__ import annotations

import json
import logging

import api_jobs
import repository_webhooks
from errors import ConflictError, TransientError
from logs import log_event
from models import NotifyMessage
from services_webhook import SIGNATURE_HEADER, TargetRefused, check_addresses, check_url, sign
from task_manager import Engine

logger = logging.getLogger(__name__)


def deliver(engine: Engine, msg: NotifyMessage) -> None:
    """One delivery attempt; schedules the next one or records the outcome."""
    job = engine.store.get_job(msg.job_id)
    if job is None or job.webhook != "pending" or not job.callback_url:
        return
    settings = engine.settings
    body = json.dumps(api_jobs.status(engine, job.job_id)[1], separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "geoetl-webhook/1",
               SIGNATURE_HEADER: sign(body, settings.webhook_secret.get_secret_value()),
               "X-Geoetl-Event": f"job.{job.status.value}", "X-Geoetl-Delivery": f"{job.job_id}:{job.status.value}"}
    try:
        host, port = check_url(job.callback_url, settings.webhook_allow_loopback)
        check_addresses(repository_webhooks.resolve(host, port), settings.webhook_allow_loopback)
        code = repository_webhooks.post(job.callback_url, body, headers, settings.webhook_timeout_s)
        error = None if 200 <= code < 300 else f"receiver answered HTTP {code}"
    except TargetRefused as exc:
        _record(engine, job.job_id, "refused", exc.message)
        return
    except TransientError as exc:
        error = exc.message
    if error is None:
        _record(engine, job.job_id, "delivered", None)
    elif msg.attempt >= settings.webhook_max_attempts:
        _record(engine, job.job_id, "failed", f"gave up after {msg.attempt} attempts: {error}")
    else:
        delay = engine.retry_delay_s(msg.attempt)
        engine.repos.jobs_queue.send(NotifyMessage(job_id=job.job_id, attempt=msg.attempt + 1), delay_s=delay)
        log_event(logger, "webhook_retry_scheduled", job_id=job.job_id, attempt=msg.attempt, delay_s=delay,
                  error=error)


def _record(engine: Engine, job_id: str, state: str, error: str | None) -> None:
    for _ in range(20):
        job = engine.store.get_job(job_id)
        if job is None or job.webhook != "pending":
            return
        try:
            engine.store.replace_job(job.model_copy(update={"webhook": state, "webhook_error": error}))
            log_event(logger, f"webhook_{state}", logging.INFO if state == "delivered" else logging.WARNING,
                      job_id=job_id, error=error)
            return
        except ConflictError:
            continue

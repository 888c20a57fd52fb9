"""Completion webhooks: deliver a job's final status to its callback URL, signed, with retries.

The terminal status write marks the webhook ``pending`` (same conditional write); a ``notify``
message then delivers it: checked target, HMAC-SHA256 signature, retried with backoff on failure,
``delivered`` / ``failed`` / ``refused`` recorded on the job. The sweeper re-sends pending ones.
"""
from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import cast

import engine_links
import engine_status
import engine_tracing
import repository_webhooks
from engine_context import EngineContext
from engine_jobs import update_job
from errors import TransientError
from logs import log_event
from models import JobRecord, NotifyMessage, utcnow
from repository_webhook_rules import SIGNATURE_HEADER, TargetRefused, check_addresses, check_url, sign

logger = logging.getLogger(__name__)


@engine_tracing.consumer("webhook.deliver")
def deliver(ctx: EngineContext, msg: NotifyMessage) -> None:
    """One delivery attempt; schedules the next one or records the outcome.

    One chain per terminal status: attempt n is claimed on the job row (``webhook_attempt`` n-1 -> n)
    before the POST, so a duplicate message or a second sweeper's resend of the same attempt finds it
    taken and does nothing. The claim also sets ``webhook_due``, after which the sweeper resends.
    """
    settings = ctx.settings

    def claim(current: JobRecord) -> JobRecord | None:
        if current.webhook != "pending" or not current.callback_url or current.webhook_attempt != msg.attempt - 1:
            return None
        due = utcnow() + timedelta(seconds=settings.webhook_timeout_s + 1.2 * ctx.retry_cap_s(msg.attempt))
        return current.model_copy(update={"webhook_attempt": msg.attempt, "webhook_due": due})

    job = update_job(ctx.store, msg.job_id, claim)
    if job is None:
        log_event(logger, "webhook_message_ignored", job_id=msg.job_id, attempt=msg.attempt)
        return
    document = engine_links.sign_status(  # the receiver gets working read links, as the status endpoint gives
        ctx.io.rasters, engine_status.status_document(ctx.store, job).model_dump(mode="json", exclude_none=True))
    body = json.dumps(document, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "geoetl-webhook/1",
               SIGNATURE_HEADER: sign(body, settings.webhook_secret.get_secret_value()),
               "X-Geoetl-Event": f"job.{job.status.value}", "X-Geoetl-Delivery": f"{job.job_id}:{job.status.value}"}
    callback_url = cast(str, job.callback_url)  # claim() moved only a row with a callback_url
    try:
        host, port = check_url(callback_url, settings.webhook_allow_loopback)
        addresses = repository_webhooks.resolve(host, port)
        check_addresses(addresses, settings.webhook_allow_loopback)
        code = repository_webhooks.post(callback_url, body, headers, settings.webhook_timeout_s,
                                        host=host, port=port, addresses=addresses)  # only the checked addresses
        error = None if 200 <= code < 300 else f"receiver answered HTTP {code}"
    except TargetRefused as exc:
        _record(ctx, job.job_id, "refused", exc.message)
        return
    except TransientError as exc:
        error = exc.message
    if error is None:
        _record(ctx, job.job_id, "delivered", None)
    elif msg.attempt >= settings.webhook_max_attempts:
        _record(ctx, job.job_id, "failed", f"gave up after {msg.attempt} attempts: {error}")
    else:
        delay = ctx.retry_delay_s(msg.attempt)
        ctx.queues.jobs.send(NotifyMessage(job_id=job.job_id, attempt=msg.attempt + 1,
                                                   traceparent=engine_tracing.carry(job)), delay_s=delay)
        log_event(logger, "webhook_retry_scheduled", job_id=job.job_id, attempt=msg.attempt, delay_s=delay,
                  error=error)
        engine_tracing.annotate(webhook_state="retry", webhook_error=error)


def _record(ctx: EngineContext, job_id: str, state: str, error: str | None) -> None:
    def record(job: JobRecord) -> JobRecord | None:
        return job.model_copy(update={"webhook": state, "webhook_error": error}) if job.webhook == "pending" else None

    engine_tracing.annotate(webhook_state=state, webhook_error=error)
    if update_job(ctx.store, job_id, record) is not None:
        log_event(logger, f"webhook_{state}", logging.INFO if state == "delivered" else logging.WARNING,
                  job_id=job_id, error=error)

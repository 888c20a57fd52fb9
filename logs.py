"""Structured logs: one JSON object per line, keyed by job_id / task_id (the worker drops ``extra=``);
and the one in-process signal a host listens to (``watch_enqueued``).

Every line passes through ``redact``: SAS signatures, account keys, passwords, URL credentials, function
keys and tokens never reach a log, whatever an error message carried. Tracebacks too: ``log_event``
formats the exception itself and logs it redacted (as ``traceback``), never the live exception, and
``RedactFilter`` does the same for records logged with ``logger.exception`` where it is installed.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Iterator

_SECRETS = re.compile(
    r"(?i)\b(sig|se|skoid|sktid|skt|ske|sks|skv|sv|sp|spr|srt|ss|st|sr)=[^&\s\"';]+(?=(&[a-z]+=|[\s\"';]|$))"
    r"|(AccountKey|SharedAccessSignature|password|pwd)=[^;\s\"']+")
_OTHER_SECRETS = re.compile(
    # scheme://user:PASSWORD@host; a scheme of at most 32 characters keeps this linear on a long word (an
    # unbounded one rescanned the rest of the word at each of its letters: 17 s for a 32,000-letter error)
    r"(?i)(?P<keep>[a-z][a-z0-9+.-]{0,31}://[^/\s:@\"']+:)[^/\s@\"']+(?=@)"
    r"|(?P<keep2>[?&]code=)[^&\s\"']+"  # a function key in a URL
    r"|(?P<keep3>\b(?:x-functions-key|authorization)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+|basic\s+)?)[^\s\"',;]+")


def redact(text: str) -> str:
    """``text`` with SAS query values, account keys, passwords, URL credentials, function keys and
    authorization headers replaced by ``***``."""
    text = _SECRETS.sub(lambda m: f"{m.group(1) or m.group(3)}=***", text)
    return _OTHER_SECRETS.sub(lambda m: (m.group("keep") or m.group("keep2") or m.group("keep3")) + "***", text)


def format_exception(exc_info: Any = True) -> str | None:
    """The traceback of ``exc_info`` (True: the exception being handled) as text, redacted; None if none."""
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not exc_info or exc_info[0] is None:
        return None
    return redact("".join(traceback.format_exception(*exc_info)).rstrip())


class RedactFilter(logging.Filter):
    """Redacts a record in place before any handler formats it: the message with its arguments, and
    the traceback (formatted now into ``exc_text``; the live exception is dropped from the record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record, redacted."""
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info:
            record.exc_text = format_exception(record.exc_info)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("geoetl_log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within this block (this thread or task), every ``log_event`` line carries ``fields`` too (job_id,
    task_id, task_type, task_version, trace ids): a handler's own lines name the task without passing ids."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, exc_info: bool = False,
              **fields: Any) -> None:
    """Log ``{"event": event, **context, **fields}`` as one JSON line, secrets redacted; with ``exc_info``
    the exception being handled is added, formatted and redacted, as ``traceback``."""
    payload = {"event": event, **(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    if exc_info and (text := format_exception(exc_info)):
        payload["traceback"] = text
    logger.log(level, redact(json.dumps(payload, default=str, separators=(",", ":"))))


# ------------------------------------------------------------------ in-process signal: a message was enqueued
_enqueued_watchers: list[Any] = []


def watch_enqueued(callback: Any) -> None:
    """Call ``callback(queue_name)`` after every message this process enqueues visible at once (a callback
    subscribed twice is called once). The Functions host does this for messages a function enqueues through
    an output binding (its ``SharedQueueWatcher`` cuts that queue listener's back-off short); ``local_host``
    subscribes its pollers, so a stage's messages are taken at once, not after up to ``maxPollingInterval``."""
    if callback not in _enqueued_watchers:
        _enqueued_watchers.append(callback)


def announce_enqueued(queue_name: str) -> None:
    """Tell the watchers that this process just enqueued a message visible at once on ``queue_name`` (a
    watcher's error is logged, never raised: the message was sent)."""
    for callback in _enqueued_watchers:
        try:
            callback(queue_name)
        except Exception:  # noqa: BLE001
            logging.getLogger(__name__).warning("enqueue watcher failed", exc_info=True)

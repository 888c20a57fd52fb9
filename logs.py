"""Structured logs: one JSON object per line, keyed by job_id / task_id (the worker drops ``extra=``).

Every line passes through ``redact``: SAS signatures, account keys, passwords and tokens in URLs or
connection strings never reach a log, whatever an error message carried.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

_SECRETS = re.compile(
    r"(?i)\b(sig|se|skoid|sktid|skt|ske|sks|skv|sv|sp|spr|srt|ss|st|sr)=[^&\s\"';]+(?=(&[a-z]+=|[\s\"';]|$))"
    r"|(AccountKey|SharedAccessSignature|password|pwd)=[^;\s\"']+")


def redact(text: str) -> str:
    """``text`` with SAS query values, account keys and passwords replaced by ``***``."""
    return _SECRETS.sub(lambda m: f"{m.group(1) or m.group(3)}=***", text)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, exc_info: bool = False,
              **fields: Any) -> None:
    """Log ``{"event": event, **fields}`` as one JSON line, secrets redacted."""
    payload = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
    logger.log(level, redact(json.dumps(payload, default=str, separators=(",", ":"))), exc_info=exc_info)

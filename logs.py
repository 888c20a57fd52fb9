"""Structured logs: one JSON object per line, keyed by job_id / task_id (the worker drops ``extra=``)."""
from __future__ import annotations

import json
import logging
from typing import Any


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, exc_info: bool = False,
              **fields: Any) -> None:
    """Log ``{"event": event, **fields}`` as one JSON line."""
    payload = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
    logger.log(level, json.dumps(payload, default=str, separators=(",", ":")), exc_info=exc_info)

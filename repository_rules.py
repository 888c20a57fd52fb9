"""Azure Table Storage's rules, enforced by us where Azurite does not: the characters a key may hold, entity
sizes and property counts, and transactions batched within the count and wire-size limits."""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from errors import EntityTooLargeError, InvalidKeyError, echo
from models import utf16_len

MAX_PROPERTY_BYTES = 64 * 1024
MAX_ENTITY_BYTES = 1024 * 1024
MAX_CUSTOM_PROPERTIES = 252
MAX_KEY_CHARS = 1024
_FORBIDDEN_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


def validate_key(key: str) -> str:
    """Return ``key`` if Table Storage accepts it as a PartitionKey/RowKey, else raise."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("table key must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidKeyError(f"table key longer than {MAX_KEY_CHARS} characters")
    bad = _FORBIDDEN_KEY.search(key)
    if bad:
        raise InvalidKeyError(f"table key {echo(key)} contains forbidden character {bad.group()!r}")
    return key


def property_bytes(value: Any) -> int:
    """Bytes Azure charges for one property value."""
    if isinstance(value, str):
        return 4 + 2 * utf16_len(value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float, datetime)):
        return 8
    if isinstance(value, (bytes, bytearray)):
        return 4 + len(value)
    raise TypeError(f"unsupported entity property type {type(value).__name__}")


def entity_bytes(entity: dict[str, Any]) -> int:
    """Size of an entity as Azure computes it (keys and every property, names in UTF-16)."""
    size = 4 + 2 * (utf16_len(entity["PartitionKey"]) + utf16_len(entity["RowKey"]))
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey") or value is None:
            continue
        size += 8 + 2 * utf16_len(name) + property_bytes(value)
    return size


def check_entity_limits(entity: dict[str, Any]) -> None:
    """Raise EntityTooLargeError where Azure (not Azurite) would reject the entity."""
    validate_key(entity["PartitionKey"])
    validate_key(entity["RowKey"])
    custom = [k for k, v in entity.items() if k not in ("PartitionKey", "RowKey") and v is not None]
    if len(custom) > MAX_CUSTOM_PROPERTIES:
        raise EntityTooLargeError(f"entity has {len(custom)} properties; Azure allows {MAX_CUSTOM_PROPERTIES}")
    for name in custom:
        value = entity[name]
        if isinstance(value, (str, bytes)) and property_bytes(value) - 4 > MAX_PROPERTY_BYTES:
            raise EntityTooLargeError(f"property {name!r} is over Azure's 64 KiB property limit")
    size = entity_bytes(entity)
    if size > MAX_ENTITY_BYTES:
        raise EntityTooLargeError(f"entity is {size} bytes; Azure allows {MAX_ENTITY_BYTES}")


# ---------------------------------------------------------------- transactions and paging
BATCH_MAX_OPERATIONS = 100
BATCH_MAX_BYTES = 3 * 1024 * 1024  # Azure's transaction payload limit is 4 MiB


OPERATION_OVERHEAD_BYTES = 1024  # a $batch part's own headers


def wire_bytes(entity: dict[str, Any]) -> int:
    """Bytes of an entity in a request body: the service's JSON escapes every non-ASCII character
    as ``\\uXXXX`` (6 bytes), so this is not its UTF-16 storage size."""
    return len(json.dumps(entity, ensure_ascii=True, default=str, separators=(",", ":")))


def chunk_for_transactions(entities: list[dict[str, Any]], max_ops: int = BATCH_MAX_OPERATIONS,
                           max_bytes: int = BATCH_MAX_BYTES) -> list[list[dict[str, Any]]]:
    """Split entities into deterministic batches within Azure's operation count and request size.

    An entity counts as the larger of its wire bytes and its storage size, plus its operation's
    overhead: either may be the one that reaches the limit first."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for entity in entities:
        nbytes = max(wire_bytes(entity), entity_bytes(entity)) + OPERATION_OVERHEAD_BYTES
        if current and (len(current) == max_ops or size + nbytes > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(entity)
        size += nbytes
    if current:
        batches.append(current)
    return batches

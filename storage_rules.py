"""Azure Storage's rules, enforced by us: table keys, entity limits (Azurite skips some), and
container and blob names."""
from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator

from errors import BadRequestError, EntityTooLargeError, InvalidKeyError

_FORBIDDEN_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
MAX_KEY_CHARS = 1024
MAX_PROPERTY_BYTES = 64 * 1024
MAX_ENTITY_BYTES = 1024 * 1024
MAX_CUSTOM_PROPERTIES = 252


def validate_key(key: str) -> str:
    """Return ``key`` if Table Storage accepts it as a PartitionKey/RowKey, else raise."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("table key must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidKeyError(f"table key longer than {MAX_KEY_CHARS} characters")
    bad = _FORBIDDEN_KEY.search(key)
    if bad:
        raise InvalidKeyError(f"table key {key!r} contains forbidden character {bad.group()!r}")
    return key


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units, the unit Azure counts strings in."""
    return len(text.encode("utf-16-le")) // 2


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


_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
MAX_BLOB_NAME = 1024


def validate_container_name(name: str) -> str:
    """Azure's container rules: 3-63 chars, lowercase letters, digits, single hyphens inside."""
    if not isinstance(name, str) or not _CONTAINER.match(name):
        raise ValueError(f"{name!r} is not a valid container name (3-63 lowercase letters, digits and "
                         "single hyphens, starting and ending with a letter or digit)")
    return name


def validate_blob_name(name: str) -> str:
    """Azure's blob rules plus ours: 1-1024 chars, no control characters, relative, no '.'/'..' parts."""
    if not isinstance(name, str) or not name or len(name) > MAX_BLOB_NAME:
        raise ValueError(f"a blob name must be 1-{MAX_BLOB_NAME} characters")
    if name.startswith("/") or "\\" in name:
        raise ValueError(f"blob name {name!r} must be a relative path with '/' separators")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"blob name {name!r} has an empty, '.' or '..' path segment")
    if _FORBIDDEN_KEY.search(name.replace("/", "").replace("#", "").replace("?", "")):
        raise ValueError(f"blob name {name!r} contains control characters")
    if name.count("/") >= 254:
        raise ValueError("a blob name may have at most 254 path segments")
    return name


ContainerName = Annotated[str, AfterValidator(validate_container_name)]
BlobName = Annotated[str, AfterValidator(validate_blob_name)]


# ---------------------------------------------------------------- transactions and paging
BATCH_MAX_OPERATIONS = 100
BATCH_MAX_BYTES = 3 * 1024 * 1024  # Azure's transaction payload limit is 4 MiB


def encode_token(token: dict[str, str] | None) -> str | None:
    """Opaque continuation token for clients."""
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode() if token else None


def decode_token(token: str | None) -> dict[str, str] | None:
    """Inverse of ``encode_token``; BadRequestError for anything else."""
    if not token:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(value, dict) and set(value) <= {"PartitionKey", "RowKey"}:
            return value
    except (ValueError, UnicodeDecodeError):
        pass
    raise BadRequestError("invalid continuation token: pass back the 'continuation' value of the previous page")


def chunk_for_transactions(entities: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split entities into deterministic batches within Azure's count and size limits."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for entity in entities:
        nbytes = entity_bytes(entity)
        if current and (len(current) == BATCH_MAX_OPERATIONS or size + nbytes > BATCH_MAX_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(entity)
        size += nbytes
    if current:
        batches.append(current)
    return batches

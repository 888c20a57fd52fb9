"""POST /api/sign (and GET /api/sign?href=): read links for catalogue readers.

The body is an href object, a STAC item or an item collection; the answer is the same with every asset
href signed (a read-only SAS) and ``expires_at`` beside it. Only blobs of the app's job containers are
signed; anything else is a 400 naming them. pystac-client readers call it from a modifier (docs/api.md,
"Reading the catalogue").
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

import engine_links
from api_jobs import parse_json_object
from errors import BadRequestError, ParameterValidationError, field_errors
from task_manager import Engine

Response = tuple[int, dict[str, Any]]


class HrefRequest(BaseModel):
    """One blob URL to sign."""

    model_config = ConfigDict(extra="forbid")
    href: str = Field(min_length=1, description="a plain blob URL in one of the app's job containers")


class StacAsset(BaseModel):
    """A STAC asset: its href is signed, everything else kept."""

    model_config = ConfigDict(extra="allow")
    href: str


class StacItem(BaseModel):
    """A STAC item: every asset href is signed."""

    model_config = ConfigDict(extra="allow")
    type: Literal["Feature"]
    assets: dict[str, StacAsset]


class StacItemCollection(BaseModel):
    """A STAC item collection (a search page): every item's assets are signed."""

    model_config = ConfigDict(extra="allow")
    type: Literal["FeatureCollection"]
    features: list[StacItem]


class SignedHref(BaseModel):
    """Body of a signed href."""

    href: str = Field(description="the blob URL with a read-only SAS")
    expires_at: str | None = Field(None, description="when the link stops working (UTC, ISO 8601); absent when "
                                   "SAS_ENABLED=false (the plain URL)")


SignRequest = HrefRequest | StacItem | StacItemCollection
REQUEST = TypeAdapter(SignRequest)


def _check(value: dict[str, Any]) -> None:
    """400 unless ``value`` is an href object, an item or an item collection (one entry per bad field)."""
    try:
        REQUEST.validate_python(value, strict=True)
    except ValidationError as exc:
        declared = value.get("type") if isinstance(value.get("type"), str) else None  # any JSON value may be there
        kind = {"Feature": StacItem, "FeatureCollection": StacItemCollection}.get(declared, HrefRequest)
        errors = field_errors([e for e in exc.errors(include_url=False) if e["loc"] and e["loc"][0] == kind.__name__],
                              skip=1)
        raise ParameterValidationError(
            'give {"href": <blob URL>}, a STAC Item or an ItemCollection: '
            + ("; ".join(f"{e['field']}: {e['message']}" for e in errors) or "none of them matches"),
            errors=errors) from None


def sign(engine: Engine, body: bytes, href: str | None = None) -> Response:
    """``?href=`` signed, else the JSON body (an href object, an item or an item collection) signed."""
    if href:
        return 200, engine_links.signer(engine.io.rasters).href(href)
    if not body.strip():
        raise BadRequestError('give ?href=<blob URL>, or POST {"href": ...}, a STAC Item or an ItemCollection')
    value = parse_json_object(body, engine.settings.max_request_bytes)
    try:
        json.dumps(value, allow_nan=False)  # echoed back: NaN or Infinity would make the answer invalid JSON
    except ValueError:
        raise BadRequestError("request body holds NaN or Infinity, which JSON does not allow") from None
    _check(value)
    return 200, engine_links.signer(engine.io.rasters).stac(value)

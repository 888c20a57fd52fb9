"""OpenAPI 3.1 document of the HTTP API (placeholder: being written)."""
from __future__ import annotations

from typing import Any


def document(base_url: str) -> dict[str, Any]:
    """The OpenAPI document."""
    return {"openapi": "3.1.0", "info": {"title": "geoetl", "version": "0"}, "paths": {}}

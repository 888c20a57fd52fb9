"""The dashboard: a web page the app serves itself, from the files in ``dashboard/``, and the catalogue
items its map draws.

Behind function keys (``AuthLevel.FUNCTION``) every request needs the key, and a browser sends none for
the files a page links to. So the page is ONE response: ``serve("")`` inlines the style sheet and scripts
index.html links, and a Content-Security-Policy allows exactly those inline blocks (by hash) and calls to
this origin only. The page's script sends the key it was opened with (``?code=``) as ``x-functions-key``
on every API call and on the world outline it fetches; the Referrer-Policy keeps the key out of Referer.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

import engine_status
from api_listing import limit_of
from errors import BadRequestError, echo
from task_manager import Engine

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
PAGE_CACHE = "no-cache"  # the page is revalidated each time (ETag): a deployment shows at once
FILE_CACHE = "private, max-age=3600"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+")  # one segment, no "..", no hidden file
_LINKED = re.compile(r'<script src="(?P<script>[a-z0-9-]+\.js)"></script>'
                     r'|<link rel="stylesheet" href="(?P<style>[a-z0-9-]+\.css)">')  # inlined by page()
COLLECTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
Response = tuple[int, dict[str, Any]]


class Asset(NamedTuple):
    """What the dashboard function answers: status, content type, body and headers."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


def files() -> list[str]:
    """The names ``serve`` answers (besides the empty name, the page)."""
    return sorted(p.name for p in DASHBOARD_DIR.iterdir()
                  if p.is_file() and _FILE_NAME.fullmatch(p.name) and p.suffix in CONTENT_TYPES)


def _not_found(name: str) -> Asset:
    body = json.dumps({"error": "not_found", "message": f"no dashboard file {echo(name)}; the page is "
                                                        "/api/dashboard/"}).encode()
    return Asset(404, "application/json", body, {**SECURITY_HEADERS, "Cache-Control": "no-store"})


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def page() -> tuple[bytes, str]:
    """index.html with the scripts and style sheets it links inlined, and the Content-Security-Policy that
    allows exactly those (by hash)."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}

    def inline(found: re.Match[str]) -> str:
        element = found.lastgroup or ""
        content = (DASHBOARD_DIR / found.group(element)).read_text(encoding="utf-8")
        if f"</{element}" in content.lower():
            raise RuntimeError(f"dashboard/{found.group(element)} cannot be inlined: it holds </{element}")
        hashes[element].append(f"'sha256-{_sha256(content)}'")
        return f"<{element}>{content}</{element}>"

    html = _LINKED.sub(inline, (DASHBOARD_DIR / INDEX).read_text(encoding="utf-8"))
    csp = (f"default-src 'none'; script-src {' '.join(hashes['script'])}; style-src {' '.join(hashes['style'])}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html.encode(), csp


def serve(name: str, if_none_match: str | None = None) -> Asset:
    """GET /api/dashboard/{file}: the page for "" or index.html, else one file of ``dashboard/``.

    Only plain file names of the folder with a known content type; anything else (a path, ``..``, a
    hidden file) is a 404. An ETag is sent; a matching ``If-None-Match`` gets a 304 without a body.
    """
    name = (name or "").strip("/")
    headers = dict(SECURITY_HEADERS)
    if name in ("", INDEX):
        body, csp = page()
        content_type, cache = CONTENT_TYPES[".html"], PAGE_CACHE
        headers.update({"Content-Security-Policy": csp, "X-Frame-Options": "DENY"})
    else:
        if not _FILE_NAME.fullmatch(name) or name not in files():
            return _not_found(name)
        path = (DASHBOARD_DIR / name).resolve()
        if path.parent != DASHBOARD_DIR:  # a symlink pointing out of the folder
            return _not_found(name)
        body, content_type, cache = path.read_bytes(), CONTENT_TYPES[path.suffix], FILE_CACHE
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers.update({"Cache-Control": cache, "ETag": etag, "Content-Type": content_type})
    if if_none_match and (if_none_match.strip() == "*" or etag in [t.strip().removeprefix("W/")
                                                                   for t in if_none_match.split(",")]):
        return Asset(304, content_type, b"", headers)
    return Asset(200, content_type, body, headers)


# ---------------------------------------------------------------- the map's items
class ItemFeature(BaseModel):
    """A catalogued item's footprint, as a GeoJSON Feature."""

    type: str = "Feature"
    id: str
    collection: str
    bbox: list[float] | None = None
    geometry: dict[str, Any] | None = Field(description="GeoJSON geometry, lon/lat (WGS 84)")
    properties: dict[str, Any] = Field(default_factory=dict, description="datetime")


class ItemFootprints(BaseModel):
    """Body of GET /api/catalog/items: a GeoJSON FeatureCollection."""

    type: str = "FeatureCollection"
    features: list[ItemFeature]
    collection: str | None = Field(None, description="the collection asked for; null: every collection")
    limit: int


def catalog_items(engine: Engine, collection: str | None = None, limit: str | None = None) -> Response:
    """GET /api/catalog/items?collection=&limit=: item footprints as GeoJSON; 503 without a catalogue."""
    if collection and not COLLECTION_ID.fullmatch(collection):
        raise BadRequestError(f"collection must be a STAC collection id (letters, digits, '.', '_', '-'; at most "
                              f"200 characters), got {echo(collection)}")
    count = limit_of(limit, 100)
    features = engine_status.item_footprints(engine.io, collection or None, count)
    body = ItemFootprints(features=[ItemFeature(**f) for f in features], collection=collection or None, limit=count)
    return 200, body.model_dump(mode="json")

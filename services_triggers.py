"""Which blob events start jobs: Event Grid ``BlobCreated`` events of raster files. Pure: no I/O.

An event names its blob in ``subject`` (``/blobServices/default/containers/<c>/blobs/<name>``) and its
version in ``data.eTag``. Sidecar files (masks, overviews, world files, projections, GDAL's .aux.xml)
and anything that is not a raster start nothing; neither do empty blobs (ADLS Gen2 announces a file
when it is created empty, then again when it is flushed).
"""
from __future__ import annotations

import re
from typing import Any

from models import BlobArrival

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SIDECAR_SUFFIXES = (".msk", ".ovr", ".aux.xml", ".tfw", ".tifw", ".wld", ".prj")
_SUBJECT = re.compile(r"^/blobServices/default/containers/([^/]+)/blobs/(.+)$")


def normalise_etag(etag: str) -> str:
    """An ETag without the quotes HTTP puts around it (events carry it bare, listings quoted)."""
    return etag.strip().strip('"')


def parse_blob_event(event_id: str | None, event_type: str, subject: str, data: object) -> BlobArrival | None:
    """The blob a ``BlobCreated`` event announces; None for any other event type.

    ValueError when a ``BlobCreated`` event does not name a blob and its ETag (nothing could say
    which version it was, so nothing may start).
    """
    if event_type != BLOB_CREATED:
        return None
    found = _SUBJECT.match(subject or "")
    if not found:
        raise ValueError(f"BlobCreated event {event_id}: subject {subject!r} does not name a blob")
    fields: dict[str, Any] = data if isinstance(data, dict) else {}
    etag = fields.get("eTag") or fields.get("etag")
    if not isinstance(etag, str) or not normalise_etag(etag):
        raise ValueError(f"BlobCreated event {event_id} for {found.group(1)}/{found.group(2)} carries no eTag")
    size = fields.get("contentLength")
    return BlobArrival(container=found.group(1), blob=found.group(2), etag=normalise_etag(etag),
                       size=size if isinstance(size, int) else None, content_type=fields.get("contentType"),
                       event_id=event_id)


def skip_reason(arrival: BlobArrival, raster_suffixes: tuple[str, ...]) -> str | None:
    """Why this blob starts nothing (``sidecar``, ``not a raster``, ``empty``), or None if it is a raster."""
    name = arrival.blob.lower()
    if name.endswith(SIDECAR_SUFFIXES):
        return "sidecar"
    if not name.endswith(tuple(s.lower() for s in raster_suffixes)):
        return "not a raster"
    if arrival.size == 0:
        return "empty"
    return None


def watches_blob(container: str, prefix: str, arrival: BlobArrival) -> bool:
    """True when a watch on ``container`` under ``prefix`` covers the arrived blob."""
    return arrival.container == container and arrival.blob.startswith(prefix)

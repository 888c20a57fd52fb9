"""Where a raster task reads its input: the blob over the network, with the sidecars beside it.

``open_blob`` lists the blob's siblings once (the blob's name up to its extension as the prefix finds
the blob and every sidecar GDAL would look for on a local disk), then hands GDAL the blob's own URL with
a short read SAS (``/vsicurl/``): validation reads the header and a few blocks, COG creation reads each
block once, and nothing of the input is written to scratch. A ``.msk``/``.ovr`` is read the same way
(its own URL and SAS, opened through the same gate); ``.aux.xml``, world files and ``.prj`` are small
and read into memory. A small blob (``WHOLE_READ_BYTES``, 4 MiB by default) is cheaper read whole: one
GET into scratch replaces the signature read and GDAL's ranged reads; when a container listing already
found it alone (no sidecar beside it), that GET is the task's only request. With ``SAS_ENABLED=false``
there is no URL GDAL could use: every blob and sidecar is read whole into scratch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base_controller import TaskIO
from errors import InputNotFoundError, NotFoundError
from models import BlobInfo
from services_sidecars import MAX_TEXT_SIDECAR_BYTES, TIFF_KINDS, listing_prefix, sidecar_names
from services_source import RasterSource, Sidecars, TextSidecar

HEAD_BYTES = 16  # what services_gdal checks before a remote read (the TIFF signature)


@dataclass
class SourceBlob:
    """A blob ready for GDAL: the source, the sidecars allowed, and what the listing said about them."""

    container: str
    blob: str
    info: BlobInfo
    source: RasterSource
    sidecars: Sidecars
    sidecar_urls: dict[str, str] = field(default_factory=dict)  # kind -> URL (no credentials), for STAC
    notes: list[str] = field(default_factory=list)

    @property
    def downloaded(self) -> bool:
        """The input was copied to scratch (a small blob, or no SAS available)."""
        return not self.source.remote

    def describe(self) -> dict[str, Any]:
        """For a task result: how the input was read and which sidecars were offered."""
        return {"read": "read whole into scratch" if self.downloaded else "remote (/vsicurl/, read SAS)",
                "sidecars_found": sorted(self.sidecar_urls.values())}


def open_blob(io: TaskIO, container: str, blob: str, folder: Path, listed_size: int | None = None) -> SourceBlob:
    """The blob and its sidecars as GDAL sources; InputNotFoundError (``not_found``) if the blob or its
    container does not exist. A small blob, or any blob without a SAS (``SAS_ENABLED=false``), is read
    whole into ``folder``. ``listed_size``: a container listing found the blob, that size, and no sidecar
    beside it; a small one is then read with one request and no listing of its own."""
    if listed_size is not None and listed_size <= io.settings.whole_read_bytes:
        alone = _read_whole_alone(io, container, blob, folder)
        if alone is not None:
            return alone
    names = sidecar_names(blob)
    try:
        found = io.rasters.siblings(container, listing_prefix(blob), [blob, *names])
    except NotFoundError as exc:
        raise InputNotFoundError(exc.message) from None
    if blob not in found:
        raise InputNotFoundError(f"blob not found: {container}/{blob}")
    info = found[blob]
    sas = io.rasters.read_sas_url(container, blob)  # None: SAS_ENABLED=false
    source = _tiff_source(io, container, blob, info, folder, "input", sas)
    sidecars: dict[str, Any] = {}
    urls: dict[str, str] = {}
    notes: list[str] = []
    for name, kind in names.items():  # GDAL's order: .tfw before .tifw before .wld; lower case first
        if name not in found or kind.value in sidecars:
            continue
        sibling = found[name]
        urls[kind.value] = io.rasters.url(container, name)
        if kind in TIFF_KINDS:
            sas_of = io.rasters.read_sas_url(container, name) if sas else None
            sidecars[kind.value] = _tiff_source(io, container, name, sibling, folder, f"sidecar-{kind.value}", sas_of)
        elif sibling.size > MAX_TEXT_SIDECAR_BYTES:
            notes.append(f"ignored {container}/{name}: {sibling.size:,} bytes is too large for a "
                         f"{kind.value.replace('_', ' ')}")
        else:
            content = io.rasters.head_bytes(container, name, sibling.size) if sibling.size else b""
            sidecars[kind.value] = TextSidecar(name=f"{container}/{name}", content=content)
    return SourceBlob(container=container, blob=blob, info=info, source=source, sidecars=Sidecars(**sidecars),
                      sidecar_urls=urls, notes=notes)


def _read_whole_alone(io: TaskIO, container: str, blob: str, folder: Path) -> SourceBlob | None:
    """One GET: the blob into ``folder``, its properties from the reply; no sidecars. None if the blob has
    grown past ``WHOLE_READ_BYTES`` since it was listed (then it is read like any other)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"input{Path(blob).suffix.lower() or '.bin'}"
    try:
        info = io.rasters.download(container, blob, path, max_bytes=io.settings.whole_read_bytes)
    except NotFoundError as exc:
        raise InputNotFoundError(exc.message) from None
    if info.size > io.settings.whole_read_bytes:
        path.unlink(missing_ok=True)
        return None
    return SourceBlob(container=container, blob=blob, info=info,
                      source=RasterSource(path=str(path), label=f"{container}/{blob}", size=info.size),
                      sidecars=Sidecars())


def _tiff_source(io: TaskIO, container: str, blob: str, info: BlobInfo, folder: Path, stem: str,
                 sas: str | None) -> RasterSource:
    """A TIFF blob as GDAL reads it: its URL with a read SAS (``sas``) and its first bytes, or, without a
    SAS, a local copy in ``folder``."""
    label = f"{container}/{blob}"
    try:
        if sas and info.size > io.settings.whole_read_bytes:
            head = io.rasters.head_bytes(container, blob, HEAD_BYTES) if info.size else b""
            return RasterSource(path=f"/vsicurl/{sas}", label=label, remote_url=io.rasters.url(container, blob),
                                head=head, size=info.size)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}{Path(blob).suffix.lower() or '.bin'}"
        io.rasters.download(container, blob, path)
        return RasterSource(path=str(path), label=label, size=info.size)
    except NotFoundError as exc:  # deleted between the listing and the read
        raise InputNotFoundError(exc.message) from None

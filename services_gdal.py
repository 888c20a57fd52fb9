"""Open user rasters safely: the one gate every GDAL read of user data goes through.

GDAL picks a driver from a file's *content*, and several formats name other files or URLs (a VRT's
sources, a PAM ``.aux.xml``'s ``OVERVIEW_FILE``, world files). So a blob called ``scene.tif`` could
make the worker read ``/etc/passwd`` or call any address. ``open_user_raster`` closes that:

- **Formats**: GeoTIFF only (COGs and BigTIFFs are GeoTIFFs). The first bytes must be a TIFF signature
  *and* GDAL may only try its GTiff driver. VRT is opened only for the mosaics the app writes itself
  (``app_vrt=True``: a file that starts with ``<VRTDataset``, VRT driver only).
- **Paths**: a local file, or ``/vsicurl/`` of exactly the one URL the caller allows (``remote_url``:
  the blob's own URL on the storage account; the caller also passes the blob's first bytes). Any other
  ``/vsi...`` path is refused.
- **Sidecars are never discovered by GDAL.** ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` makes GDAL see
  no sibling files (``.aux.xml``, ``.ovr``, ``.msk``, world files, ``.imd``/``.rpb``), ``GDAL_PAM_ENABLED=NO``
  never reads (or writes) ``.aux.xml``, ``GDAL_GEOREF_SOURCES=INTERNAL`` takes georeferencing from the
  file only. A raster's companions are used only through ``services_source.open_raster``'s allow-list
  (``Sidecars``, built by the caller from a listing of the blob's siblings): a ``.msk``/``.ovr`` is opened
  as its own dataset through this same gate (TIFF signature, GTiff only, exactly its own URL), and text
  sidecars are parsed by ``services_sidecars`` (safe XML, known elements only; world files are six
  numbers; a ``.prj`` is WKT checked by ``services_crs.user_crs``), then applied by the app (``UserRaster``).
  Why not let GDAL find them: over ``/vsicurl/`` a sibling is another URL (``CPL_VSIL_CURL_ALLOWED_FILENAME``
  takes one; ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` would allow any host), GDAL does not look for sidecars
  of a URL with a query string (the SAS) at all, and a sidecar GDAL reads itself is read unchecked (an
  ``.aux.xml`` can name an ``OVERVIEW_FILE`` anywhere, a ``.msk`` can be a VRT). Reading each one on its
  own keeps every guarantee above, for local files and URLs alike.
- **Network**: ``CPL_VSIL_CURL_ALLOWED_FILENAME`` is the one allowed URL (or a name no URL has, for
  local reads), so GDAL's curl-based readers open nothing else; ``GDAL_HTTP_*`` bound retries and time.
- **Limits** (``RasterLimits``): pixels, bands and bytes per block, checked from the header right after
  open, before any pixel is read (``TooLargeError``, message ``too_large: ...``).
- **CRS texts** (parameters, an ``.aux.xml`` ``<SRS>``, a ``.prj``) go through ``services_crs.user_crs``:
  authority codes, WKT and PROJJSON naming no grid, file or URL, checked before PROJ parses them.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pydantic import BaseModel, Field
from rasterio._err import CPLE_BaseError
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader

from config import Settings
from errors import CorruptRasterError, NotARasterError, TooLargeError

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
VRT_MAGIC = b"<VRTDataset"
USER_DRIVER = "GTiff"  # reads GeoTIFF, BigTIFF and COG (GDAL's "COG" driver only writes)
APP_VRT_DRIVER = "VRT"
VSICURL = "/vsicurl/"
NO_NETWORK = "/vsicurl/geoetl:no-network-for-local-reads"
# Errors rasterio and GDAL raise for bad files; anything else is a bug and propagates.
GDAL_ERRORS = (RasterioError, CPLE_BaseError)
RASTER_ERRORS = GDAL_ERRORS + (CRSError, ValueError)
# GDAL configuration for every open of user data (and for as long as the dataset is open).
USER_DATA_ENV: dict[str, str] = {
    "GDAL_PAM_ENABLED": "NO",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_GEOREF_SOURCES": "INTERNAL",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_NETRC": "NO",
    "GDAL_HTTP_UNSAFESSL": "NO",
    "GDAL_VRT_ENABLE_PYTHON": "NO",
    "VSI_CACHE": "TRUE",
}
_DEFAULTS = Settings.model_fields


class RasterLimits(BaseModel):
    """Most a user raster may declare; defaults are the settings' defaults."""

    max_pixels: int = Field(_DEFAULTS["max_raster_pixels"].default, ge=1, description="width x height")
    max_block_bytes: int = Field(_DEFAULTS["max_block_bytes"].default, ge=1,
                                 description="bytes GDAL decodes to read one block (tile or strip)")
    max_bands: int = Field(_DEFAULTS["max_bands"].default, ge=1)

    @classmethod
    def from_settings(cls, settings: Any) -> RasterLimits:
        """The limits configured in ``settings`` (a ``config.Settings``)."""
        return cls(max_pixels=settings.max_raster_pixels, max_block_bytes=settings.max_block_bytes,
                   max_bands=settings.max_bands)


def gdal_message(exc: BaseException) -> str:
    """The most specific message in an exception chain (rasterio hides GDAL's under ``__cause__``)."""
    messages = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and "See previous exception" not in text:
            messages.append(text)
        current = current.__cause__ or current.__context__
    return messages[-1] if messages else type(exc).__name__


def read_head(path: str | Path, length: int = 16) -> bytes:
    """The first ``length`` bytes of a local file (b"" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(length)
    except OSError:
        return b""


def looks_like_tiff(path: str | Path) -> bool:
    """True if the local file starts with a (Big)TIFF signature."""
    return read_head(path, 4) in TIFF_MAGIC


def what_it_is(head: bytes) -> str:
    """A few words on what a file that is not a GeoTIFF seems to be (for error messages)."""
    text = head.lstrip()
    known = ((b"<VRTDataset", "VRT XML"), (b"<?xml", "XML"), (b"<", "XML or HTML"), (b"\x89PNG", "PNG"),
             (b"\xff\xd8\xff", "JPEG"), (b"PK\x03\x04", "a ZIP archive"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
             (b"{", "JSON"))
    if not head:
        return "an empty file"
    return next((name for magic, name in known if text.startswith(magic)), "no TIFF signature")


def check_signature(head: bytes, label: str, app_vrt: bool = False) -> None:
    """NotARasterError (``not a raster``) unless ``head`` starts with a TIFF signature (or, for the app's
    own mosaics, with ``<VRTDataset``)."""
    if head[:4] in TIFF_MAGIC or (app_vrt and head.lstrip().startswith(VRT_MAGIC)):
        return
    raise NotARasterError(f"not a raster: {label}: only GeoTIFF/COG files are accepted and this is "
                          f"{what_it_is(head)}")


def check_limits(src: DatasetReader, limits: RasterLimits, label: str) -> None:
    """TooLargeError when the open dataset declares more pixels, bands or block bytes than allowed.

    Reads only what the header declared. Bytes per block: a pixel-interleaved block holds every band.
    """
    pixels = src.width * src.height
    if pixels > limits.max_pixels:
        raise TooLargeError(f"too_large: {label}: {src.width:,} x {src.height:,} = {pixels:,} pixels; the "
                            f"limit is {limits.max_pixels:,} (MAX_RASTER_PIXELS)")
    if src.count > limits.max_bands:
        raise TooLargeError(f"too_large: {label}: {src.count:,} bands; the limit is {limits.max_bands:,} "
                            f"(MAX_BANDS)")
    sizes = [np.dtype(dtype).itemsize for dtype in src.dtypes] or [1]
    pixel_interleaved = src.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE", "").upper() == "PIXEL"
    per_pixel = sum(sizes) if pixel_interleaved else max(sizes)
    rows, cols = max(src.block_shapes, key=lambda shape: shape[0] * shape[1], default=(1, 1))
    block_bytes = rows * cols * per_pixel
    if block_bytes > limits.max_block_bytes:
        raise TooLargeError(f"too_large: {label}: one block ({cols:,} x {rows:,} pixels) is {block_bytes:,} "
                            f"bytes to decode; the limit is {limits.max_block_bytes:,} (MAX_BLOCK_BYTES): "
                            f"re-tile it (e.g. gdal_translate -co TILED=YES)")


def user_data_env(allowed_url_path: str | None = None) -> rasterio.Env:
    """The GDAL configuration for user data; network only to ``allowed_url_path`` (a ``/vsicurl/``
    path), none at all without it."""
    return rasterio.Env(**USER_DATA_ENV, CPL_VSIL_CURL_ALLOWED_FILENAME=allowed_url_path or NO_NETWORK)


def _source_driver(path: str, app_vrt: bool, remote_url: str | None, head: bytes | None, label: str) -> str:
    """Check where ``path`` points and what it starts with; the one driver GDAL may use for it."""
    if path.startswith("/vsi"):
        target = path[len(VSICURL):] if path.startswith(VSICURL) else None
        if target is None or not remote_url or not (target == remote_url or target.startswith(remote_url + "?")):
            raise NotARasterError(f"not a raster: refused to read {path.split('?', 1)[0]}: only local files and "
                                  f"the blob's own URL may be read")
        if app_vrt or head is None:
            raise ValueError("a remote read needs the blob's first bytes (head=) and is never a VRT")
    elif not os.path.isfile(path):
        raise NotARasterError(f"not a raster: {label}: no such file")
    else:
        head = read_head(path)
    check_signature(head, label, app_vrt)
    return APP_VRT_DRIVER if app_vrt else USER_DRIVER


@contextmanager
def open_user_raster(path: str | Path, *, limits: RasterLimits | None = None, app_vrt: bool = False,
                     remote_url: str | None = None, head: bytes | None = None, label: str | None = None,
                     **kwargs: Any) -> Iterator[DatasetReader]:
    """Open a user raster for reading, safely (see the module docstring); close it on exit.

    ``app_vrt``: the file is a mosaic VRT this app wrote (its sources are files the app checked).
    ``remote_url``/``head``: for ``/vsicurl/<remote_url>?<sas>``, the blob URL allowed and the blob's
    first bytes. ``label``: how messages name the file (default ``path``; give one for URLs, so no SAS
    reaches a message). ``kwargs`` go to ``rasterio.open`` (e.g. ``overview_level``). Raises
    NotARasterError ("not a raster": wrong signature, no such file, not openable), CorruptRasterError
    ("corrupt raster": a TIFF GDAL cannot open), TooLargeError over ``limits``. GDAL's configuration
    stays in force while it is open. Sidecars: see ``services_source.open_raster``.
    """
    path = str(path)
    label = label or path
    driver = _source_driver(path, app_vrt, remote_url, head, label)
    with user_data_env(path if remote_url else None):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                src = rasterio.open(path, driver=driver, **kwargs)
        except RASTER_ERRORS as exc:
            corrupt = remote_url or looks_like_tiff(path)
            kind, error = ("corrupt raster", CorruptRasterError) if corrupt else ("not a raster", NotARasterError)
            raise error(f"{kind}: {label}: {gdal_message(exc)}") from exc
        try:
            check_limits(src, limits or RasterLimits(), label)
            yield src
        finally:
            src.close()

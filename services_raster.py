"""What a raster file is, where it lies, and whether it can be read: ``validate_raster``.

Pure: takes a local path, returns a ``RasterInfo``. Inputs no retry can fix raise ``TaskError`` with a
message a user can act on ("not a raster", "corrupt raster", "no coordinate reference system",
"no geotransform"). COG creation lives in ``services_cog``, tiling in ``services_tiles``.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import rasterio
from affine import Affine
from pydantic import BaseModel, Field
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.transform import from_gcps
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rio_cogeo import cog_validate

from errors import TaskError

logger = logging.getLogger(__name__)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
DENSIFY_POINTS = 21
WGS84 = CRS.from_epsg(4326)
# Errors rasterio and GDAL raise for bad files; anything else is a bug and propagates.
GDAL_ERRORS = (RasterioError, CPLE_BaseError)
RASTER_ERRORS = GDAL_ERRORS + (CRSError, ValueError)

Bounds = tuple[float, float, float, float]


class RasterInfo(BaseModel):
    """What ``validate_raster`` found. Bounds are (west/left, south/bottom, east/right, north/top)."""

    path: str
    driver: str
    file_size: int
    crs: str = Field(description="'AUTHORITY:CODE' when the CRS has one (e.g. 'EPSG:32618'), else WKT")
    crs_wkt: str = Field(description="WKT2 (2019) of the CRS")
    epsg: int | None
    bounds: Bounds = Field(description="in the raster's own CRS")
    bounds_wgs84: Bounds = Field(description="EPSG:4326 lon/lat; west > east when it crosses 180 degrees")
    transform: tuple[float, float, float, float, float, float] = Field(description="affine a, b, c, d, e, f")
    res: tuple[float, float]
    width: int
    height: int
    count: int
    dtypes: list[str]
    nodata: float | None
    colorinterp: list[str]
    has_alpha: bool = Field(description="one band is an alpha band")
    has_mask: bool = Field(description="an internal/external per-dataset mask (not alpha, not nodata)")
    block_shape: tuple[int, int] = Field(description="(rows, cols) of band 1's blocks")
    overviews: list[int]
    compression: str | None
    is_cog: bool
    cog_errors: list[str] = Field(default_factory=list)
    georeferenced_by_gcps: bool = False
    tiff_datetime: datetime | None = Field(None, description="TIFFTAG_DATETIME, read as UTC")
    warnings: list[str] = Field(default_factory=list)

    @property
    def validity(self) -> str:
        """How invalid pixels are marked: 'nodata', 'alpha', 'mask' or 'none'."""
        if self.nodata is not None:
            return "nodata"
        if self.has_alpha:
            return "alpha"
        return "mask" if self.has_mask else "none"


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


def looks_like_tiff(path: str | Path) -> bool:
    """True if the file starts with a (Big)TIFF signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in TIFF_MAGIC
    except OSError:
        return False


@contextmanager
def open_raster(path: str | Path, **kwargs) -> Iterator[DatasetReader]:
    """``rasterio.open`` for reading that turns every way of failing to open into a ``TaskError``.

    A missing file, a directory or an unknown format is "not a raster"; a file with a TIFF signature
    that GDAL cannot open is "corrupt raster".
    """
    path = str(path)
    if not path.startswith("/vsi") and not os.path.isfile(path):  # /vsicurl/ etc.: GDAL reads remotely
        raise TaskError(f"not a raster: {path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path, **kwargs)
    except RASTER_ERRORS as exc:
        kind = "corrupt raster" if looks_like_tiff(path) else "not a raster"
        raise TaskError(f"{kind}: {path}: {gdal_message(exc)}") from exc
    try:
        yield src
    finally:
        src.close()


def validate_raster(path: str | Path) -> RasterInfo:
    """Open ``path``, check it is a readable, georeferenced raster, and describe it.

    Raises ``TaskError`` ("not a raster: ...", "corrupt raster: ...", "no geotransform: ...",
    "no coordinate reference system: ...") for inputs no retry can fix. The corruption check reads the
    first block and the last block of every resolution level (full resolution and each overview):
    a truncated file loses its tail, and that is where writers put the last blocks and the overviews
    they add later. It costs a few blocks, never the whole raster.
    """
    path = str(path)
    with open_raster(path) as src:
        transform, crs, gcp_warnings = _georeferencing(src, path)
        _check_blocks(src, path)
        bounds = native_bounds(transform, src.width, src.height)
        try:
            bounds_wgs84 = transform_bounds(crs, WGS84, *bounds, densify_pts=DENSIFY_POINTS)
        except RASTER_ERRORS as exc:
            raise TaskError(f"cannot place the raster on the globe: {path}: {gdal_message(exc)}") from exc
        if not all(math.isfinite(v) for v in bounds_wgs84):
            raise TaskError(f"cannot place the raster on the globe: {path}: bounds {bounds} do not "
                            f"transform to finite longitudes/latitudes")
        notes = list(gcp_warnings)
        if transform.b or transform.d:
            notes.append("rotated or sheared geotransform: bounds enclose the rotated footprint")
        if bounds_wgs84[0] > bounds_wgs84[2]:
            notes.append("footprint crosses the antimeridian (west > east in bounds_wgs84)")
        flags = src.mask_flag_enums[0]
        colorinterp = [ci.name for ci in src.colorinterp]
        tiff_dt, dt_note = parse_tiff_datetime(src.tags().get("TIFFTAG_DATETIME"))
        if dt_note:
            notes.append(dt_note)
        is_cog, cog_errors, cog_warnings = _cog_check(path)
        return RasterInfo(
            path=path, driver=src.driver, file_size=os.path.getsize(path),
            crs=crs_string(crs), crs_wkt=crs.to_wkt(version="WKT2_2019"), epsg=crs.to_epsg(),
            bounds=bounds, bounds_wgs84=tuple(bounds_wgs84), transform=tuple(transform)[:6],
            res=(math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)),
            width=src.width, height=src.height, count=src.count, dtypes=list(src.dtypes),
            nodata=src.nodata, colorinterp=colorinterp,
            has_alpha=ColorInterp.alpha in src.colorinterp,
            has_mask=MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags,
            block_shape=tuple(src.block_shapes[0]), overviews=src.overviews(1),
            compression=src.compression.value if src.compression else None,
            georeferenced_by_gcps=bool(gcp_warnings), tiff_datetime=tiff_dt,
            is_cog=is_cog, cog_errors=cog_errors, warnings=notes + cog_warnings)


def crs_string(crs: CRS) -> str:
    """'AUTHORITY:CODE' when PROJ can name the CRS, else its WKT2."""
    authority = crs.to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else crs.to_wkt(version="WKT2_2019")


def native_bounds(transform: Affine, width: int, height: int) -> Bounds:
    """(left, bottom, right, top) enclosing the four corners (true for rotated transforms too)."""
    corners = [transform @ corner for corner in ((0, 0), (width, 0), (width, height), (0, height))]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    return (min(xs), min(ys), max(xs), max(ys))


def parse_tiff_datetime(value: str | None) -> tuple[datetime | None, str | None]:
    """TIFFTAG_DATETIME ('YYYY:MM:DD HH:MM:SS', no zone: read as UTC) -> (datetime, warning)."""
    if not value or not value.strip():
        return None, None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(value.strip().rstrip("\x00"), fmt).replace(tzinfo=UTC), None
        except ValueError:
            continue
    return None, f"ignored TIFFTAG_DATETIME {value!r}: not 'YYYY:MM:DD HH:MM:SS'"


def _georeferencing(src: DatasetReader, path: str) -> tuple[Affine, CRS, list[str]]:
    """(transform, crs, warnings); raises TaskError when either is missing."""
    gcps, gcp_crs = src.gcps
    transform, crs, notes = src.transform, src.crs, []
    if transform.is_identity:
        if not gcps:
            raise TaskError(f"no geotransform: {path}: the raster has neither a geotransform nor "
                            f"ground control points, so its pixels cannot be placed on the map")
        transform, crs = from_gcps(gcps), crs or gcp_crs
        notes.append(f"georeferenced by {len(gcps)} ground control points: the transform is a fit")
    if crs is None or not crs.to_wkt():
        raise TaskError(f"no coordinate reference system: {path}: the raster has a geotransform but no "
                        f"CRS; set one (e.g. gdal_edit.py -a_srs EPSG:xxxx) and resubmit")
    return transform, crs, notes


def _last_block(src: DatasetReader) -> Window:
    rows, cols = src.block_shapes[0]
    row_off = (src.height - 1) // rows * rows
    col_off = (src.width - 1) // cols * cols
    return Window(col_off, row_off, src.width - col_off, src.height - row_off)


def _check_blocks(src: DatasetReader, path: str) -> None:
    """Decode the first block and the last block of every resolution level; TaskError if one fails."""
    rows, cols = src.block_shapes[0]
    try:
        src.read(window=Window(0, 0, min(cols, src.width), min(rows, src.height)))
        src.read(window=_last_block(src))
        if MaskFlags.per_dataset in src.mask_flag_enums[0]:
            src.dataset_mask(window=_last_block(src))
        for level in range(len(src.overviews(1))):
            with rasterio.open(path, overview_level=level) as ovr:
                ovr.read(window=_last_block(ovr))
    except RASTER_ERRORS as exc:
        raise TaskError(f"corrupt raster: {path}: {gdal_message(exc)} (truncated or damaged file?)") from exc


def _cog_check(path: str) -> tuple[bool, list[str], list[str]]:
    """rio-cogeo's validator, never raising: (is_cog, errors, warnings)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cog_validate(path, quiet=True)
    except RASTER_ERRORS as exc:
        return False, [f"COG validation failed: {gdal_message(exc)}"], []

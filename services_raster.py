"""What a raster file is, where it lies, and whether it can be read: ``validate_raster``.

Pure: takes a local path or a ``RasterSource`` (a blob's URL with a read SAS: GDAL reads only the
header and the blocks it probes, never the whole file) and the sidecars the caller allows, returns a
``RasterInfo``. Inputs no retry can fix raise a ``TaskError`` subclass whose ``code`` says why, with a
message a user can act on ("not a raster", "corrupt raster", "no coordinate reference system",
"no geotransform", "off_globe", "too_large"). Every open goes through ``services_gdal.open_user_raster``
(GeoTIFF only, sidecars only from the allow-list, no other network, size limits). COG creation lives in
``services_cog``, tiling in ``services_tiles``.
"""
from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

from affine import Affine
from pydantic import BaseModel, Field
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.io import DatasetReader
from rasterio.transform import from_gcps
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from errors import CorruptRasterError, NoCrsError, NoGeotransformError
from services_footprint import DENSIFY_POINTS, bounds_finite, edge_ring, outline_wgs84
from services_gdal import RASTER_ERRORS, RasterLimits, gdal_message, open_user_raster
from services_source import RasterSource, Sidecars, UserRaster, as_source, open_raster

logger = logging.getLogger(__name__)

WGS84 = CRS.from_epsg(4326)
PROBE_PX = 256  # corruption probes read windows of at most this many pixels a side
COG_SCAN_BLOCKS = 4096  # most block offsets the COG check inspects per level to find the first block

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
    remote: bool = Field(False, description="read over the network: ``path`` is the blob's name, not a file")
    local_file: str | None = Field(None, exclude=True,
                                   description="the local file GDAL read (None for a URL); never reported")
    sidecars: list[str] = Field(default_factory=list, description="sidecar files that changed what GDAL reads")

    @property
    def validity(self) -> Literal["nodata", "alpha", "mask", "none"]:
        """How invalid pixels are marked: 'nodata', 'alpha', 'mask' or 'none'."""
        if self.nodata is not None:
            return "nodata"
        if self.has_alpha:
            return "alpha"
        return "mask" if self.has_mask else "none"


def validate_raster(source: str | Path | RasterSource, limits: RasterLimits | None = None, *, app_vrt: bool = False,
                    sidecars: Sidecars | None = None) -> RasterInfo:
    """Open ``source``, check it is a readable, georeferenced GeoTIFF within ``limits``, and describe it,
    with what its allowed ``sidecars`` say applied (``services_source.open_raster``).

    Raises NotARasterError ("not a raster: ..."), CorruptRasterError ("corrupt raster: ..."),
    NoGeotransformError ("no geotransform: ..."), NoCrsError ("no coordinate reference system: ..."),
    OffGlobeError ("off_globe: ...": no pixel transforms to longitude/latitude) for inputs no retry can
    fix, TooLargeError ("too_large: ...") over the limits (checked from the header first). The corruption
    check reads a small window at the start of the first block and at the end of the last block of every
    resolution level (full resolution, each overview, a sidecar mask and overviews): a truncated file loses
    its tail, and that is where writers put the last blocks and the overviews they add later. It decodes
    a few blocks, each within ``limits.max_block_bytes``. ``app_vrt``: ``source`` is a mosaic VRT this app
    wrote.
    """
    source = as_source(source)
    label = source.name
    limits = limits or RasterLimits()
    with open_raster(source, limits=limits, sidecars=sidecars, app_vrt=app_vrt) as raster:
        src = raster.src
        transform, crs, gcp_warnings = _georeferencing(raster, label)
        _check_blocks(raster, limits, app_vrt)
        bounds = native_bounds(transform, src.width, src.height)
        bounds_wgs84 = wgs84_bounds(crs, transform, src.width, src.height, label)
        notes = list(raster.notes) + gcp_warnings
        if raster.used:
            notes.append(f"sidecars used: {', '.join(raster.used)}")
        if transform.b or transform.d:
            notes.append("rotated or sheared geotransform: bounds enclose the rotated footprint")
        if bounds_wgs84[0] > bounds_wgs84[2]:
            notes.append("footprint crosses the antimeridian (west > east in bounds_wgs84)")
        colorinterp = [ci.name for ci in src.colorinterp]
        tiff_dt, dt_note = parse_tiff_datetime(raster.tags().get("TIFFTAG_DATETIME"))
        if dt_note:
            notes.append(dt_note)
        is_cog, cog_errors, cog_warnings = _cog_check(raster, limits, app_vrt)
        if raster.overviews is not None:
            cog_warnings.append("overviews are in a .ovr sidecar: a COG keeps them inside the file")
        return RasterInfo(
            path=label, driver=src.driver, file_size=source.file_size(), remote=source.remote,
            local_file=None if source.remote else source.path,
            crs=crs_string(crs), crs_wkt=crs.to_wkt(version="WKT2_2019"), epsg=crs.to_epsg(),
            bounds=bounds, bounds_wgs84=bounds_wgs84, transform=tuple(transform)[:6],
            res=(math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)),
            width=src.width, height=src.height, count=src.count, dtypes=list(src.dtypes),
            nodata=raster.nodata, colorinterp=colorinterp,
            has_alpha=ColorInterp.alpha in src.colorinterp, has_mask=raster.has_mask,
            block_shape=tuple(src.block_shapes[0]), overviews=src.overviews(1) or raster.overview_factors,
            compression=src.compression.value if src.compression else None,
            georeferenced_by_gcps=bool(gcp_warnings), tiff_datetime=tiff_dt, sidecars=list(raster.used),
            is_cog=is_cog, cog_errors=cog_errors, warnings=notes + cog_warnings)


def wgs84_bounds(crs: CRS, transform: Affine, width: int, height: int, label: str) -> Bounds:
    """(west, south, east, north) in EPSG:4326 of what lies on the Earth: GDAL's ``transform_bounds`` when
    the outline transforms, else the bbox of ``services_footprint``'s sampled footprint (OffGlobeError
    when nothing transforms). West > east when it crosses 180 degrees."""
    bounds = native_bounds(transform, width, height)
    if edge_ring(crs.to_wkt(), transform, width, height) is not None:
        try:
            found = transform_bounds(crs, WGS84, *bounds, densify_pts=DENSIFY_POINTS)
            if bounds_finite(found):
                west, south, east, north = found
                return west, south, east, north
        except RASTER_ERRORS:
            pass
    west, south, east, north = outline_wgs84(crs.to_wkt(), transform, width, height, label)[1]
    return west, south, east, north


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


def _georeferencing(raster: UserRaster, label: str) -> tuple[Affine, CRS, list[str]]:
    """(transform, crs, warnings); NoGeotransformError / NoCrsError when either is missing."""
    gcps, gcp_crs = raster.src.gcps
    transform, crs, notes = raster.transform, raster.crs, []
    if transform.is_identity:
        if not gcps:
            raise NoGeotransformError(f"no geotransform: {label}: the raster has neither a geotransform nor "
                                      f"ground control points (nor a world file or .aux.xml giving one), so "
                                      f"its pixels cannot be placed on the map")
        transform, crs = from_gcps(gcps), crs or gcp_crs
        notes.append(f"georeferenced by {len(gcps)} ground control points: the transform is a fit")
    if crs is None or not crs.to_wkt():
        ignored = [n for n in raster.notes if n.startswith("ignored")]  # e.g. a .prj whose CRS was refused
        raise NoCrsError(f"no coordinate reference system: {label}: the raster has a geotransform but no "
                         f"CRS; set one (e.g. gdal_edit.py -a_srs EPSG:xxxx, or a .prj beside it) and resubmit"
                         + "".join(f"; {n}" for n in ignored[:3]))
    return transform, crs, notes


def _probes(src: DatasetReader) -> tuple[Window, Window]:
    """Small windows at the start of the first block and at the end of the last block."""
    rows, cols = src.block_shapes[0]
    first = Window(0, 0, min(cols, src.width, PROBE_PX), min(rows, src.height, PROBE_PX))
    last_rows = min(src.height - (src.height - 1) // rows * rows, PROBE_PX)
    last_cols = min(src.width - (src.width - 1) // cols * cols, PROBE_PX)
    return first, Window(src.width - last_cols, src.height - last_rows, last_cols, last_rows)


def reopen(source: RasterSource, limits: RasterLimits, app_vrt: bool = False,
           **kwargs: Any) -> AbstractContextManager[DatasetReader]:
    """``open_user_raster`` of a source again (e.g. one overview level: ``overview_level=``)."""
    return open_user_raster(source.path, limits=limits, app_vrt=app_vrt, remote_url=source.remote_url,
                            head=source.head, label=source.name, **kwargs)


def _check_blocks(raster: UserRaster, limits: RasterLimits, app_vrt: bool) -> None:
    """Decode the first and last block of every resolution level and mask; CorruptRasterError if one fails."""
    src, label = raster.src, raster.source.name
    try:
        for window in _probes(src):
            src.read(window=window)
        if raster.has_mask:
            raster.read_mask(window=_probes(src)[1])
        for level in range(len(src.overviews(1))):
            with reopen(raster.source, limits, app_vrt, overview_level=level) as ovr:
                ovr.read(window=_probes(ovr)[1])
        if raster.overviews is not None and raster.overviews_source is not None:
            label = raster.overviews_source.name
            raster.overviews.read(window=_probes(raster.overviews)[1])
            for level in range(len(raster.overviews.overviews(1))):
                with reopen(raster.overviews_source, limits, overview_level=level) as ovr:
                    ovr.read(window=_probes(ovr)[1])
    except RASTER_ERRORS as exc:
        raise CorruptRasterError(f"corrupt raster: {label}: {gdal_message(exc)} (truncated or damaged "
                                 f"file?)") from exc


def _cog_check(raster: UserRaster, limits: RasterLimits, app_vrt: bool) -> tuple[bool, list[str], list[str]]:
    """(is_cog, errors, warnings), never raising: rio-cogeo's ``cog_validate`` rules, on datasets opened
    through the guard (rio-cogeo's own ``rasterio.open`` would accept any driver and any sidecar)."""
    src = raster.src
    if src.driver != "GTiff":
        return False, ["The file is not a GeoTIFF"], []
    try:
        return _cog_rules(src, raster.source, limits, app_vrt)
    except RASTER_ERRORS as exc:
        return False, [f"COG validation failed: {gdal_message(exc)}"], []


def _first_data_offset(src: DatasetReader, ovr: int | None, width: int, height: int) -> int:
    """Offset of the first block with data (0 if none among the first ``COG_SCAN_BLOCKS``)."""
    rows, cols = src.block_shapes[0]
    xblocks, yblocks = -(-width // cols), -(-height // rows)
    for i in range(min(xblocks * yblocks, COG_SCAN_BLOCKS)):
        offset = src.get_tag_item(f"BLOCK_OFFSET_{i % xblocks}_{i // xblocks}", "TIFF", bidx=1, ovr=ovr)
        if offset and int(offset) > 0:
            return int(offset)
    return 0


def _cog_rules(src: DatasetReader, source: RasterSource, limits: RasterLimits,
               app_vrt: bool) -> tuple[bool, list[str], list[str]]:
    errors: list[str] = []
    notes: list[str] = []
    overviews = src.overviews(1)
    if src.width > 512 or src.height > 512:
        if src.block_shapes[0][1] == src.width:
            errors.append("The file is greater than 512xH or 512xW, but is not tiled")
        if not overviews:
            notes.append("The file is greater than 512xH or 512xW, it is recommended to include internal overviews")
    ifd_offsets = [int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1))]
    if ifd_offsets[0] > 300:
        errors.append(f"The offset of the main IFD should be < 300. It is {ifd_offsets[0]} instead")
    if "KNOWN_INCOMPATIBLE_EDITION=YES" in (src.get_tag_item("GDAL_STRUCTURAL_METADATA", "TIFF") or ""):
        errors.append("This file used to have optimizations in its layout, but those have been, at least "
                      "partly, invalidated by later changes")
    if overviews != sorted(overviews):
        errors.append("Overviews should be sorted")
    for ix, factor in enumerate(overviews):
        if factor <= 1:
            errors.append(f"Invalid Decimation {factor} for overview level {ix}")
        ifd_offsets.append(int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=ix)))
        if ifd_offsets[-1] < ifd_offsets[-2]:
            what = "the main image" if ix == 0 else f"overview {ix - 1}"
            errors.append(f"The offset of the IFD for overview of index {ix} is {ifd_offsets[-1]}, whereas it "
                          f"should be greater than the one of {what}, which is at byte {ifd_offsets[-2]}")
    data_offsets = [_first_data_offset(src, None, src.width, src.height)]
    data_offsets += [_first_data_offset(src, ix, src.width // f, src.height // f) for ix, f in enumerate(overviews)]
    data_offsets = [o for o in data_offsets if o > 0]
    if data_offsets and data_offsets[-1] < ifd_offsets[-1]:
        errors.append("The offset of the first block of the smallest overview should be after its IFD"
                      if overviews else "The offset of the first block of the image should be after its IFD")
    for i in range(len(data_offsets) - 2, 0, -1):
        if data_offsets[i] < data_offsets[i + 1]:
            errors.append(f"The offset of the first block of overview of index {i - 1} should be after the "
                          f"one of the overview of index {i}")
    if len(data_offsets) >= 2 and data_offsets[0] < data_offsets[1]:
        errors.append(f"The offset of the first block of the main resolution image should be after the one "
                      f"of the overview of index {len(overviews) - 1}")
    for ix in range(len(overviews)):
        with reopen(source, limits, app_vrt, overview_level=ix) as ovr:
            if (ovr.width > 512 or ovr.height > 512) and ovr.block_shapes[0][1] == ovr.width:
                errors.append(f"Overview of index {ix} is not tiled")
    return not errors, errors, notes

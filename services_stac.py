"""STAC metadata for rasters: ``build_item``, ``build_collection``, ``merge_extent``, and
``validate_item_offline`` (core + extension JSON schemas from local files, never the network).

Pure: takes a path or a ``RasterInfo`` plus blob facts, returns ``pystac`` objects or dicts. Provenance
(issue #12): items say which software made them and which job run (the processing extension:
``processing:software``, ``processing:lineage``, ``processing:datetime``), when (``created``/``updated``),
and from what (a ``derived_from`` link to the source raster); a raster's sidecars are listed as assets
beside its data; collections carry ``summaries``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pystac
import rasterio
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, NoDataStrings, RasterBand, RasterExtension
from pystac.utils import datetime_to_str, str_to_datetime
from pydantic import BaseModel
from rasterio.crs import CRS

from config import APP_VERSION
from errors import TaskError
from services_footprint import footprint_wgs84
from services_gdal import RasterLimits
from services_raster import (
    RasterInfo,
    validate_raster,
)
from services_stac_schemas import EXTENSION_SCHEMA_URL, validate_item_offline  # noqa: F401 (re-exported)

DATA_ASSET = "data"
MAX_ID_LENGTH = 200
ID_SAFE = re.compile(r"[^A-Za-z0-9._-]")
MEDIA_TYPES = {"PNG": pystac.MediaType.PNG, "JPEG": pystac.MediaType.JPEG,
               "JP2OpenJPEG": pystac.MediaType.JPEG2000}
PROCESSING_EXTENSION = EXTENSION_SCHEMA_URL.format(name="processing", version="v1.2.0")
METERS_PER_DEGREE = 111_320.0
SIDECAR_MEDIA = {"mask": (pystac.MediaType.GEOTIFF, ["data-mask"]),
                 "overviews": (pystac.MediaType.GEOTIFF, ["overviews"]),
                 "aux_xml": (pystac.MediaType.XML, ["metadata"]),
                 "world_file": (pystac.MediaType.TEXT, ["metadata"]),
                 "prj": (pystac.MediaType.TEXT, ["metadata"])}  # a raster's sidecars, as assets of its item


class Provenance(BaseModel):
    """What made an item: the job run (id and type) and, for outputs, the raster it was derived from."""

    job_id: str
    job_type: str
    source_href: str | None = None  # the source raster's URL (no credentials): a derived_from link
    source_name: str | None = None  # container/blob of the source
    step: str = "catalogued"  # what the job did: "converted to a COG", "catalogued"


def software_versions() -> dict[str, str]:
    """processing:software: geoetl, GDAL, rasterio, rio-cogeo (and pystac) versions."""
    return dict(_software_versions())


@functools.cache
def _software_versions() -> dict[str, str]:
    # importlib.metadata scans sys.path on every call: about 1 ms, 6 % of a catalogue worker's CPU
    found = {"geoetl": APP_VERSION, "gdal": rasterio.__gdal_version__}
    for name in ("rasterio", "rio-cogeo", "pystac"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found



# ---------------------------------------------------------------------------------------------- items
def item_id(container: str, blob: str) -> str:
    """Readable, STAC-id-safe, deterministic id: ``<container>--<blob, '/' -> '__', extension dropped>``.

    ``--`` separates the container because Azure container names cannot contain it, so ids of
    different containers never collide. When the readable form loses information (characters outside
    ``A-Za-z0-9._-``, a ``__`` already in the blob name, or more than 200 characters) an 8-hex hash of
    ``container/blob`` is appended. Blobs that differ only by extension (``a.tif``, ``a.tiff``) share
    an id on purpose: the id names the scene, not its encoding.
    """
    path = blob.strip("/")
    if not container or not path:
        raise ValueError("container and blob are both required for an item id")
    folder, _, name = path.rpartition("/")
    if "." in name.lstrip("."):
        name = name.rsplit(".", 1)[0]
    raw = f"{container}--{(folder + '/' if folder else '') + name}".replace("/", "__")
    safe = ID_SAFE.sub("-", raw)
    lossy = safe != raw or "__" in path or len(safe) > MAX_ID_LENGTH
    if not lossy:
        return safe
    digest = hashlib.sha256(f"{container}/{path}".encode()).hexdigest()[:8]
    return f"{safe[:MAX_ID_LENGTH - 9]}-{digest}"


def build_item(source: str | Path | RasterInfo, *, container: str, blob: str, href: str,
               file_size: int | None = None, sha256: str | None = None,
               datetime: datetime | None = None, file_datetime: datetime | None = None,
               last_modified: datetime | None = None, collection_id: str | None = None,
               collection_href: str = "../collection.json",
               properties: dict[str, Any] | None = None, limits: RasterLimits | None = None,
               provenance: Provenance | None = None, sidecars: dict[str, str] | None = None,
               now: datetime | None = None) -> pystac.Item:
    """A STAC Item for one raster blob, with projection, raster and file extensions.

    ``source`` is the local copy of the blob (a path, validated within ``limits``) or its ``RasterInfo``
    (then ``file_size`` and, for a local file, ``sha256`` are computed from it when not given; a file read
    by ranges over the network gets no checksum).

    Datetime precedence: the ``datetime`` parameter (the caller knows best), else ``file_datetime``
    (default: the file's TIFFTAG_DATETIME, read as UTC), else ``last_modified`` (the blob's
    Last-Modified). Naive datetimes are taken as UTC. TaskError when none is available.

    With ``collection_id``, the item gets ``collection`` and the ``rel=collection`` link STAC requires
    alongside it (``collection_href``: the static-catalog layout by default; STAC APIs such as
    stac-fastapi-pgstac replace it with their own).

    Geometry and bbox are in EPSG:4326: the pixel outline densified (21 points per edge), reprojected,
    split into a MultiPolygon where it crosses the antimeridian (bbox then has west > east), closed
    over the pole when it encircles one; where the outline is off the Earth, the outline of the pixels
    that are on it (``services_footprint``).

    ``provenance`` adds the processing extension and, with a source, a ``derived_from`` link;
    ``sidecars`` (kind -> href, e.g. ``{"mask": ".../scene.tif.msk"}``) become assets beside the data.
    ``created``/``updated`` are ``now``. A remote ``info`` (read over the network) gets no checksum
    unless ``sha256`` is given: the file is never read whole for it.
    """
    info = source if isinstance(source, RasterInfo) else validate_raster(source, limits)
    when = _first_datetime(datetime, file_datetime or info.tiff_datetime, last_modified)
    if when is None:
        raise TaskError(f"no datetime for {container}/{blob}: pass one, or use a file with "
                        f"TIFFTAG_DATETIME, or give the blob's last-modified time")
    geometry, bbox = footprint_wgs84(info)
    item = pystac.Item(id=item_id(container, blob), geometry=geometry, bbox=bbox, datetime=when,
                       properties=dict(properties or {}), collection=collection_id)
    if collection_id:
        item.add_link(pystac.Link(rel=pystac.RelType.COLLECTION, target=collection_href,
                                  media_type=pystac.MediaType.JSON))
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    if info.epsg is not None:
        proj.apply(code=f"EPSG:{info.epsg}", shape=[info.height, info.width],
                   transform=list(info.transform), bbox=list(info.bounds))
    else:
        proj.apply(code=None, wkt2=info.crs_wkt, shape=[info.height, info.width],
                   transform=list(info.transform), bbox=list(info.bounds))
    media_type = MEDIA_TYPES.get(info.driver)
    if info.driver == "GTiff":
        media_type = pystac.MediaType.COG if info.is_cog else pystac.MediaType.GEOTIFF
    asset = pystac.Asset(href=href, media_type=media_type, roles=["data"], title=blob.rsplit("/", 1)[-1])
    item.add_asset(DATA_ASSET, asset)
    resolution = _resolution_m(info)
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=[
        RasterBand.create(data_type=DataType(dtype), nodata=_nodata(info.nodata),
                          spatial_resolution=resolution)
        for dtype in info.dtypes])
    if file_size is None:
        file_size = info.file_size
    if sha256 is None and info.local_file:
        sha256 = file_sha256(info.local_file)
    FileExtension.ext(asset, add_if_missing=True).apply(size=file_size,
                                                        checksum="1220" + sha256 if sha256 else None)
    for kind, sidecar_href in (sidecars or {}).items():
        media, roles = SIDECAR_MEDIA[kind]
        item.add_asset(kind, pystac.Asset(href=sidecar_href, media_type=media, roles=roles,
                                          title=sidecar_href.rsplit("/", 1)[-1]))
    stamp = datetime_to_str(now or _now())
    item.properties.update(created=stamp, updated=stamp)
    if provenance is not None:
        _add_provenance(item, provenance, stamp)
    return item


def _now() -> datetime:
    return datetime.now(UTC)


def _add_provenance(item: pystac.Item, provenance: Provenance, stamp: str) -> None:
    """The processing extension and a derived_from link."""
    lineage = f"{provenance.step} by geoetl job {provenance.job_id} ({provenance.job_type})"
    if provenance.source_name:
        lineage += f" from {provenance.source_name}"
    item.properties.update({"processing:software": software_versions(), "processing:lineage": lineage,
                            "processing:datetime": stamp})
    if PROCESSING_EXTENSION not in item.stac_extensions:
        item.stac_extensions.append(PROCESSING_EXTENSION)
    if provenance.source_href:
        item.add_link(pystac.Link(rel=pystac.RelType.DERIVED_FROM, target=provenance.source_href,
                                  media_type=pystac.MediaType.GEOTIFF, title=provenance.source_name))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _first_datetime(*candidates: datetime | None) -> datetime | None:
    for value in candidates:
        if value is not None:
            return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def _nodata(value: float | None) -> float | NoDataStrings | None:
    if value is None:
        return None
    if math.isnan(value):
        return NoDataStrings.NAN
    if math.isinf(value):
        return NoDataStrings.INF if value > 0 else NoDataStrings.NINF
    # 0.0 -> 0 reads better; huge integral floats (float32 min, -3.4e38) stay floats for JSON encoders
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


def _resolution_m(info: RasterInfo) -> float:
    """Mean pixel size in metres (degrees converted at the raster's centre latitude)."""
    crs = CRS.from_wkt(info.crs_wkt)
    rx, ry = info.res
    if crs.is_geographic:
        lat = math.radians((info.bounds_wgs84[1] + info.bounds_wgs84[3]) / 2)
        return round((rx * METERS_PER_DEGREE * math.cos(lat) + ry * METERS_PER_DEGREE) / 2, 6)
    factor = crs.linear_units_factor[1] if crs.is_projected else 1.0
    return round((rx + ry) / 2 * factor, 6)


# ------------------------------------------------------------------------------------- collections
def build_collection(collection_id: str, items: Iterable[pystac.Item | dict[str, Any]] = (), *,
                     description: str | None = None, title: str | None = None, license: str = "other",
                     bbox: list[float] | None = None,
                     interval: list[datetime | None] | None = None) -> pystac.Collection:
    """A Collection whose extent is exactly the union of ``items`` (and of ``bbox``/``interval`` if given),
    with ``summaries`` of the items (their CRS codes, and the software that processed them).

    An extent cannot be empty in STAC, so at least one item or an explicit ``bbox`` is required.
    """
    items = list(items)
    if not items and bbox is None:
        raise ValueError("build_collection needs at least one item or an explicit bbox")
    start = interval[0] if interval else None
    end = interval[1] if interval else None
    seed_bbox = bbox or _item_dict(items[0])["bbox"]
    if not interval:
        start, end = _item_interval(_item_dict(items[0])) if items else (None, None)
    collection = pystac.Collection(
        id=collection_id, description=description or f"Rasters of {collection_id}", title=title,
        license=license, extent=pystac.Extent(pystac.SpatialExtent([list(seed_bbox)]),
                                              pystac.TemporalExtent([[start, end]])))
    data = collection.to_dict(include_self_link=False, transform_hrefs=False)
    extent = data["extent"]
    for item in items:  # merge_extent item by item, without copying the whole collection each time
        extent = union_extent(extent, item_extent(item))
    data["extent"] = extent
    if summaries := summarise(items):
        data["summaries"] = summaries
    return pystac.Collection.from_dict(data)


def summarise(items: Iterable[pystac.Item | dict[str, Any]]) -> dict[str, list[Any]]:
    """STAC summaries of items: the distinct ``proj:code`` values and ``processing:software`` sets."""
    codes: list[str] = []
    software: list[dict[str, Any]] = []
    for item in items:
        props = _item_dict(item).get("properties", {})
        if props.get("proj:code") and props["proj:code"] not in codes:
            codes.append(props["proj:code"])
        if props.get("processing:software") and props["processing:software"] not in software:
            software.append(props["processing:software"])
    out: dict[str, list[Any]] = {}
    if codes:
        out["proj:code"] = sorted(codes)
    if software:
        out["processing:software"] = software
    return out


def merge_extent(collection: dict[str, Any], item: pystac.Item | dict[str, Any]) -> dict[str, Any]:
    """A copy of ``collection`` whose extent also covers ``item`` (see ``union_extent``)."""
    out: dict[str, Any] = json.loads(json.dumps(collection))
    out["extent"] = union_extent(out.get("extent"), item_extent(item))
    return out


def item_extent(item: pystac.Item | dict[str, Any]) -> dict[str, Any]:
    """The extent of one item: its bbox and its [start, end] (both ``datetime`` for an instant)."""
    data = _item_dict(item)
    start, end = _item_interval(data)
    return {"spatial": {"bbox": [list(data["bbox"])]}, "temporal": {"interval": [[_dt_str(start),
                                                                                  _dt_str(end)]]}}


def union_extent(current: dict[str, Any] | None, other: dict[str, Any]) -> dict[str, Any]:
    """Collection extent covering both: the overall bbox (``bbox[0]``) becomes the smallest lon/lat
    box holding both (antimeridian-aware), the overall interval runs from the earliest start to the
    latest end (an open end, ``null``, stays open). Sub-extents (``bbox[1:]``, ``interval[1:]``) of
    ``current`` are kept as they are."""
    if not current:
        copied: dict[str, Any] = json.loads(json.dumps(other))
        return copied
    out: dict[str, Any] = json.loads(json.dumps(current))
    bboxes = out.setdefault("spatial", {}).setdefault("bbox", [])
    other_bbox = other["spatial"]["bbox"][0]
    bboxes[:1] = [union_bbox(bboxes[0], other_bbox) if bboxes else list(other_bbox)]
    intervals = out.setdefault("temporal", {}).setdefault("interval", [])
    start, end = other["temporal"]["interval"][0]
    if intervals:
        old_start, old_end = intervals[0]
        start = None if old_start is None or start is None else _dt_str(_min_dt(old_start, _as_dt(start)))
        end = None if old_end is None or end is None else _dt_str(_max_dt(old_end, _as_dt(end)))
    intervals[:1] = [[start, end]]
    return out


def union_bbox(a: list[float], b: list[float]) -> list[float]:
    """Smallest [w, s, e, n] holding two 2D bboxes; longitudes are arcs (west > east crosses 180)."""
    (a_w, a_s, a_e, a_n), (b_w, b_s, b_e, b_n) = _bbox2d(a), _bbox2d(b)
    spans = [(a_w, _lon_span(a_w, a_e)), (b_w, _lon_span(b_w, b_e))]
    # (start, width) of each way round, a's start first; the narrower wins (the first when equal)
    start, width = min(((s1, max(w1, (s2 - s1) % 360.0 + w2)) for (s1, w1), (s2, w2) in (spans, spans[::-1])),
                       key=lambda candidate: candidate[1])
    south, north = min(a_s, b_s), max(a_n, b_n)
    if width >= 360.0:
        return [-180.0, south, 180.0, north]
    east = start + width
    east = east - 360.0 if east > 180.0 else east
    return [start, south, east, north]


def _bbox2d(bbox: list[float]) -> tuple[float, float, float, float]:
    return (bbox[0], bbox[1], bbox[3], bbox[4]) if len(bbox) == 6 else (bbox[0], bbox[1], bbox[2], bbox[3])


def _lon_span(west: float, east: float) -> float:
    """Degrees of longitude from west eastwards to east (360 for -180..180)."""
    if east == west:
        return 0.0
    return (east - west) % 360.0 or 360.0


def _item_dict(item: pystac.Item | dict[str, Any]) -> dict[str, Any]:
    if isinstance(item, pystac.Item):
        return item.to_dict(include_self_link=False, transform_hrefs=False)
    return item


def _item_interval(data: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    props = data.get("properties", {})
    start = props.get("start_datetime") or props.get("datetime")
    end = props.get("end_datetime") or props.get("datetime")
    return (str_to_datetime(start) if start else None, str_to_datetime(end) if end else None)


def _as_dt(value: str | datetime | None) -> datetime | None:
    return str_to_datetime(value) if isinstance(value, str) else value


def _min_dt(a: str | datetime | None, b: datetime | None) -> datetime | None:
    values = [v for v in (_as_dt(a), b) if v is not None]
    return min(values) if values else None


def _max_dt(a: str | datetime | None, b: datetime | None) -> datetime | None:
    values = [v for v in (_as_dt(a), b) if v is not None]
    return max(values) if values else None


def _dt_str(value: datetime | None) -> str | None:
    return datetime_to_str(value) if value is not None else None

"""STAC metadata for rasters: ``build_item``, ``build_collection``, ``merge_extent``, and
``validate_item_offline`` (core + extension JSON schemas from local files, never the network).

Pure: takes a path or a ``RasterInfo`` plus blob facts, returns ``pystac`` objects or dicts.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pystac
import referencing
import referencing.exceptions
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.utils import datetime_to_str, str_to_datetime
from pystac.validation.local_validator import get_local_schema_cache
from rasterio.crs import CRS
from referencing.jsonschema import DRAFT7

from errors import TaskError
from services_footprint import footprint_wgs84
from services_gdal import RasterLimits
from services_raster import (
    RasterInfo,
    validate_raster,
)

DATA_ASSET = "data"
MAX_ID_LENGTH = 200
ID_SAFE = re.compile(r"[^A-Za-z0-9._-]")
MEDIA_TYPES = {"PNG": pystac.MediaType.PNG, "JPEG": pystac.MediaType.JPEG,
               "JP2OpenJPEG": pystac.MediaType.JPEG2000}
EXTENSION_SCHEMA_URL = "https://stac-extensions.github.io/{name}/{version}/schema.json"
METERS_PER_DEGREE = 111_320.0



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
               properties: dict[str, Any] | None = None, limits: RasterLimits | None = None) -> pystac.Item:
    """A STAC Item for one raster blob, with projection, raster and file extensions.

    ``source`` is the local copy of the blob (a path, validated within ``limits``) or its ``RasterInfo``
    (then ``file_size`` and ``sha256`` are computed from ``info.path`` when not given).

    Datetime precedence: the ``datetime`` parameter (the caller knows best), else ``file_datetime``
    (default: the file's TIFFTAG_DATETIME, read as UTC), else ``last_modified`` (the blob's
    Last-Modified). Naive datetimes are taken as UTC. TaskError when none is available.

    With ``collection_id``, the item gets ``collection`` and the ``rel=collection`` link STAC requires
    alongside it (``collection_href``: the static-catalog layout by default; STAC APIs such as
    stac-fastapi-pgstac replace it with their own).

    Geometry and bbox are in EPSG:4326: the pixel outline densified (21 points per edge), reprojected,
    split into a MultiPolygon where it crosses the antimeridian (bbox then has west > east), closed
    over the pole when it encircles one.
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
        file_size = os.path.getsize(info.path)
    FileExtension.ext(asset, add_if_missing=True).apply(
        size=file_size, checksum="1220" + (sha256 or file_sha256(info.path)))
    return item


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


def _nodata(value: float | None) -> float | str | None:
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
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
def build_collection(collection_id: str, items: Iterable[pystac.Item | dict] = (), *,
                     description: str | None = None, title: str | None = None, license: str = "other",
                     bbox: list[float] | None = None,
                     interval: list[datetime | None] | None = None) -> pystac.Collection:
    """A Collection whose extent is exactly the union of ``items`` (and of ``bbox``/``interval`` if given).

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
    for item in items:
        data = merge_extent(data, item)
    return pystac.Collection.from_dict(data)


def merge_extent(collection: dict, item: pystac.Item | dict) -> dict:
    """A copy of ``collection`` whose extent also covers ``item`` (see ``union_extent``)."""
    out = json.loads(json.dumps(collection))
    out["extent"] = union_extent(out.get("extent"), item_extent(item))
    return out


def item_extent(item: pystac.Item | dict) -> dict:
    """The extent of one item: its bbox and its [start, end] (both ``datetime`` for an instant)."""
    data = _item_dict(item)
    start, end = _item_interval(data)
    return {"spatial": {"bbox": [list(data["bbox"])]}, "temporal": {"interval": [[_dt_str(start),
                                                                                  _dt_str(end)]]}}


def union_extent(current: dict | None, other: dict) -> dict:
    """Collection extent covering both: the overall bbox (``bbox[0]``) becomes the smallest lon/lat
    box holding both (antimeridian-aware), the overall interval runs from the earliest start to the
    latest end (an open end, ``null``, stays open). Sub-extents (``bbox[1:]``, ``interval[1:]``) of
    ``current`` are kept as they are."""
    if not current:
        return json.loads(json.dumps(other))
    out = json.loads(json.dumps(current))
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
    best = None
    for (s1, w1), (s2, w2) in (spans, spans[::-1]):
        width = max(w1, (s2 - s1) % 360.0 + w2)
        if best is None or width < best[1]:
            best = (s1, width)
    start, width = best
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


def _item_dict(item: pystac.Item | dict) -> dict:
    if isinstance(item, pystac.Item):
        return item.to_dict(include_self_link=False, transform_hrefs=False)
    return item


def _item_interval(data: dict) -> tuple[datetime | None, datetime | None]:
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


# -------------------------------------------------------------------------------- offline validation
def validate_item_offline(item: dict | pystac.Item, schemas_dir: str | Path | None) -> list[str]:
    """Validate a STAC Item (or Collection) against the core schemas shipped in pystac and the
    extension schemas under ``schemas_dir/<extension>/<version>/schema.json``; never the network.

    Returns the schema URIs checked. TaskError listing every violation, or naming an extension (or a
    ``$ref``) that has no local schema.
    """
    data = _item_dict(item) if isinstance(item, pystac.Item) else item
    kind = {"Feature": "item", "Collection": "collection"}.get(data.get("type"))
    if kind is None:
        raise TaskError(f"not a STAC Item or Collection: type {data.get('type')!r}")
    version = data.get("stac_version", "")
    core = f"https://schemas.stacspec.org/v{version}/{kind}-spec/json-schema/{kind}.json"
    registry = _registry(str(Path(schemas_dir).resolve()) if schemas_dir else None)
    uris = [core, *data.get("stac_extensions", [])]
    errors = []
    for uri in uris:
        try:
            schema = registry.contents(uri.rstrip("#"))
        except referencing.exceptions.NoSuchResource:
            raise TaskError(f"no local schema for {uri}: add it under {schemas_dir} "
                            f"(<extension>/<version>/schema.json)") from None
        try:
            for top in Draft7Validator(schema, registry=registry).iter_errors(data):
                error = _deepest(top)
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                errors.append(f"{uri.rsplit('/', 3)[-3] if 'extensions' in uri else kind}: {where}: "
                              f"{error.message[:300]}")
        except referencing.exceptions.Unresolvable as exc:
            raise TaskError(f"schema {uri} refers to {exc} which is not available offline") from exc
    if errors:
        raise TaskError(f"STAC {kind} {data.get('id')!r} is invalid: " + "; ".join(errors[:10])
                        + (f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""))
    return uris


def _deepest(error: ValidationError) -> ValidationError:
    """The innermost failure under a oneOf/anyOf (the field that is wrong, not "no branch matched")."""
    leaves, stack = [], [error]
    while stack:
        current = stack.pop()
        if current.context:
            stack.extend(current.context)
        else:
            leaves.append(current)
    return max(leaves, key=lambda e: len(e.absolute_path))


@lru_cache(maxsize=8)
def _registry(schemas_dir: str | None) -> referencing.Registry:
    """Every local schema, keyed by the URL that refers to it (with and without a trailing '#')."""
    def offline(uri: str) -> referencing.Resource:
        raise referencing.exceptions.NoSuchResource(ref=uri)

    resources = dict(get_local_schema_cache())
    if schemas_dir:
        for path in sorted(Path(schemas_dir).glob("*/v*/schema.json")):
            url = EXTENSION_SCHEMA_URL.format(name=path.parent.parent.name, version=path.parent.name)
            resources[url] = json.loads(path.read_text())
    pairs = []
    for url, schema in resources.items():
        resource = referencing.Resource.from_contents(schema, default_specification=DRAFT7)
        pairs += [(url, resource), (url + "#", resource)]
    return referencing.Registry(retrieve=offline).with_resources(pairs)

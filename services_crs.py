"""The CRS gate: a CRS a user gives (a parameter, an ``.aux.xml`` ``<SRS>``, a ``.prj``) becomes a ``CRS`` only
if it names no file, grid, init file or URL, checked on the text before PROJ or GDAL parses anything.

Why before: PROJ opens what a definition names while it *parses* it. A grid (``+nadgrids``, ``+geoidgrids``,
a WKT ``EXTENSION["PROJ4_GRIDS", ...]`` or ``PARAMETERFILE``, a PROJJSON parameter whose value is a file name),
an init file (``+init=/path:code``) or a PROJ string in disguise (``EXTENSION["PROJ4", ...]``, a method named
``PROJ-based operation method: +proj=...``) makes PROJ read a local file, and with PROJ's network access on
(``PROJ_NETWORK=ON``) fetch a URL or a grid from its endpoint when the CRS is used. ``rasterio``'s
``CRS.from_dict`` also turns any JSON object with a ``proj`` or ``init`` key into a PROJ string, so JSON is
accepted only in the shape of PROJJSON (``PROJJSON_KEYS``, ``PROJJSON_TYPES``) and handed to GDAL as PROJJSON.

Accepted: ``AUTHORITY:CODE`` of a known authority (``AUTHORITIES``), WKT (1 or 2, ``[`` or ``(`` around
nodes), PROJJSON. Refused with ValueError saying why: everything else, and any of these that names a place.
Pure: text in, ``CRS`` out; the only I/O is PROJ's own database.
"""
from __future__ import annotations

import json
import re
from typing import Any

from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform

from services_gdal import gdal_message

MAX_CRS_CHARS = 64 * 1024  # a compound CRS in WKT2 is a few KB; a .prj is read up to 64 KiB
MAX_JSON_DEPTH = 32
AUTHORITIES = ("EPSG", "ESRI", "OGC", "IGNF", "IAU_2015", "NKG", "NRCAN")  # PROJ database authorities
AUTHORITY_CODE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*):([A-Za-z0-9_.-]{1,32})$")
WKT_START = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\s*[\[(]")
CRS_FORMS = "an authority code (EPSG:4326, ESRI:102100, OGC:CRS84), WKT or PROJJSON"
# What names a grid, an init file, a PROJ string, a file or a URL, anywhere in a definition (any case).
NAMES_A_PLACE: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), why) for pattern, why in (
        (r"\b(EXTENSION|PARAMETERFILE)\s*[\[(]", "a WKT {} node (it names a file or a PROJ string)"),
        (r"PROJ4|PROJ-based", "a PROJ string inside the definition ({})"),
        (r"(nadgrids|geoidgrids|\bgrids\s*=|\binit\s*=|\+\s*init\b|\+\s*proj\b)", "a PROJ grid or init file ({})"),
        (r"(://|/vsi|\bfile:|\.\./|\\\\)", "a URL or path ({})"),
        (r"\"\s*(/|~|[A-Za-z]:[\\/])", "a path ({})"),
    ))
STRUCTURAL = re.compile(r"\b(EXTENSION|PARAMETERFILE)\s*[\[(]|PROJ-based", re.IGNORECASE)
PROJJSON_CRS_TYPES = frozenset({
    "BoundCRS", "CompoundCRS", "DerivedEngineeringCRS", "DerivedGeodeticCRS", "DerivedGeographicCRS",
    "DerivedParametricCRS", "DerivedProjectedCRS", "DerivedTemporalCRS", "DerivedVerticalCRS", "EngineeringCRS",
    "GeodeticCRS", "GeographicCRS", "ParametricCRS", "ProjectedCRS", "TemporalCRS", "VerticalCRS"})
PROJJSON_TYPES = PROJJSON_CRS_TYPES | {
    "AbridgedTransformation", "AngularUnit", "Axis", "Conversion", "CoordinateSystem", "DatumEnsemble",
    "DynamicGeodeticReferenceFrame", "DynamicVerticalReferenceFrame", "Ellipsoid", "EngineeringDatum",
    "GeodeticReferenceFrame", "LinearUnit", "Meridian", "OperationMethod", "ParameterValue", "ParametricDatum",
    "ParametricUnit", "PrimeMeridian", "ScaleUnit", "TemporalDatum", "TimeUnit", "Transformation", "Unit",
    "VerticalReferenceFrame"}
# Property names of PROJJSON (schema v0.7) a CRS uses; deformation models and operation steps are left out.
PROJJSON_KEYS = frozenset({
    "$schema", "abbreviation", "accuracy", "anchor", "anchor_epoch", "area", "authority", "authority_citation",
    "axis", "base_crs", "bbox", "calendar", "code", "components", "conversion", "conversion_factor",
    "coordinate_system", "datum", "datum_ensemble", "direction", "east_longitude", "ellipsoid", "end",
    "frame_reference_epoch", "geoid_model", "geoid_models", "id", "ids", "interpolation_crs", "inverse_flattening",
    "longitude", "maximum", "maximum_value", "members", "meridian", "method", "minimum", "minimum_value", "name",
    "north_latitude", "parameters", "prime_meridian", "radius", "range_meaning", "remarks", "scope",
    "semi_major_axis", "semi_minor_axis", "source_crs", "south_latitude", "start", "subtype", "target_crs",
    "temporal_extent", "time_origin", "transformation", "type", "unit", "uri", "usages", "value", "version",
    "vertical_extent", "west_longitude"})
# GDAL writes Web Mercator's WKT1 (EPSG:3857, in .aux.xml and .prj files too) with this one PROJ4 EXTENSION;
# ``+nadgrids=@null`` is PROJ's built-in "no shift", not a file. It alone is read, as EPSG:3857 itself.
WEB_MERCATOR_PROJ4 = {"proj": "merc", "a": 6378137.0, "b": 6378137.0, "lat_ts": 0.0, "lon_0": 0.0, "x_0": 0.0,
                      "y_0": 0.0, "k": 1.0, "units": "m", "nadgrids": "@null", "wktext": None, "no_defs": None}
PROJ4_EXTENSION = re.compile(r',\s*EXTENSION\s*[\[(]\s*"PROJ4"\s*,\s*"([^"]*)"\s*[\])]', re.IGNORECASE)
PROJJSON_SCHEMA = re.compile(r"^https://proj\.org/schemas/v\d+(\.\d+)*/projjson\.schema\.json$")
WGS84 = CRS.from_epsg(4326)


def place_named(text: str) -> str | None:
    """Why ``text`` (a CRS definition or a part of one) names a grid, init file, PROJ string, path or URL;
    None when it names none. Pure text: nothing is parsed."""
    for pattern, why in NAMES_A_PLACE:
        if found := pattern.search(text):
            return why.format(found.group(0).strip()[:40])
    return None


def _proj4_items(text: str) -> dict[str, Any]:
    items: dict[str, Any] = {}
    for token in text.split():
        key, _, value = token.lstrip("+").partition("=")
        try:
            items[key] = float(value) if value else None
        except ValueError:
            items[key] = value
    return items


def _web_mercator(text: str) -> bool:
    """True for a WKT1 whose only place-naming part is GDAL's Web Mercator PROJ4 EXTENSION."""
    found = PROJ4_EXTENSION.findall(text)
    if len(found) != 1 or _proj4_items(found[0]) != WEB_MERCATOR_PROJ4:
        return False
    return place_named(PROJ4_EXTENSION.sub("", text)) is None


def _refused(text: str, why: str) -> ValueError:
    return ValueError(f"CRS refused: {why}; give {CRS_FORMS} that names no grid, file or URL "
                      f"(got {text[:80]!r}{'...' if len(text) > 80 else ''})")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("a key appears twice")
    return dict(pairs)


def _projjson_check(value: Any, depth: int = 0, top: bool = False) -> str | None:
    """Why ``value`` (parsed JSON) is not a PROJJSON CRS naming no place; None when it is one."""
    if depth > MAX_JSON_DEPTH:
        return "PROJJSON nested too deeply"
    if isinstance(value, list):
        return next((why for item in value if (why := _projjson_check(item, depth + 1))), None)
    if isinstance(value, str):
        return place_named(f'"{value}')  # the quote: a string that starts with a path is one
    if not isinstance(value, dict):
        return None if value is None or isinstance(value, (int, float, bool)) else "not JSON"
    kind = value.get("type")
    if top and kind not in PROJJSON_CRS_TYPES:
        return f"JSON is accepted as PROJJSON only: 'type' must be one of {', '.join(sorted(PROJJSON_CRS_TYPES))}"
    if kind is not None and kind not in PROJJSON_TYPES:
        return f"PROJJSON has no object of type {str(kind)[:40]!r}"
    unknown = sorted(key for key in value if key not in PROJJSON_KEYS)
    if unknown:
        return f"{unknown[0][:40]!r} is not a PROJJSON member (a PROJ string in JSON?)"
    schema = value.get("$schema")
    if schema is not None and not (top and isinstance(schema, str) and PROJJSON_SCHEMA.match(schema)):
        return "'$schema' must be PROJ's PROJJSON schema"
    if "value" in value and isinstance(value["value"], str):
        return "a PROJJSON parameter whose value is a file (a grid)"
    return next((why for key, item in value.items() if key != "$schema"
                 and (why := _projjson_check(item, depth + 1))), None)


def _projjson(text: str) -> CRS:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise _refused(text, f"not valid JSON ({str(exc)[:80]})") from None
    if why := _projjson_check(data, top=True) if isinstance(data, dict) else "JSON must be a PROJJSON object":
        raise _refused(text, why)
    data.pop("$schema", None)
    # As PROJJSON text GDAL hands it to PROJ's PROJJSON parser (from_dict would build a PROJ string).
    return CRS.from_user_input(json.dumps(data))


def user_crs(value: str) -> CRS:
    """A CRS from a user's text: ``AUTHORITY:CODE``, WKT or PROJJSON, naming no grid, file or URL.

    Checked before PROJ or GDAL parses anything (see the module docstring); ValueError says what is accepted
    and why this was not. The CRS is checked once more as PROJ writes it back (WKT2).
    """
    if not isinstance(value, str):
        raise ValueError(f"a CRS is text: {CRS_FORMS}")
    text = value.strip()
    if len(text) > MAX_CRS_CHARS:
        raise ValueError(f"a CRS of {len(text):,} characters is too long (at most {MAX_CRS_CHARS:,})")
    try:
        if match := AUTHORITY_CODE.match(text):
            authority = match[1].upper()
            if authority not in AUTHORITIES:
                raise _refused(text, f"unknown authority {match[1][:20]!r} (known: {', '.join(AUTHORITIES)})")
            crs = CRS.from_authority(authority, match[2])
        elif text.startswith("{"):
            crs = _projjson(text)
        elif WKT_START.match(text) and _web_mercator(text):
            crs = CRS.from_epsg(3857)
        elif WKT_START.match(text):
            if why := place_named(text):
                raise _refused(text, why)
            crs = CRS.from_wkt(text)
        else:
            raise ValueError(f"not a CRS: {text[:200]!r}: give {CRS_FORMS}; paths, URLs and PROJ strings are "
                             f"not accepted")
    except (CRSError, CPLE_BaseError) as exc:
        raise ValueError(f"unknown CRS {text[:200]!r}: {gdal_message(exc)}") from exc
    if STRUCTURAL.search(crs.to_wkt(version="WKT2_2019")):  # what PROJ made of it names no file either
        raise _refused(text, "its definition needs a grid or PROJ string")
    return crs


def crs_applies(crs: CRS) -> str | None:
    """Why ``crs`` cannot be used to place a raster (no transformation to longitude/latitude); None if it can.
    A NaN point transforms to inf with any usable CRS, and raises only when there is no transformation."""
    try:
        transform(crs, WGS84, [float("nan")], [float("nan")])
    except (CRSError, CPLE_BaseError, ValueError) as exc:
        return f"it cannot be transformed to longitude/latitude ({gdal_message(exc)[:120]})"
    return None


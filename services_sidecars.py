"""A raster's sidecar files: which blob names are companions of which raster, and what the text ones say.

Pure: names in, names out; bytes in, checked values out. GDAL never parses a sidecar here: an
``.aux.xml`` is read by a safe XML parser (no DTD, no entities) and only the elements listed in
``AUX_ELEMENTS`` are honoured; a world file must be six finite numbers; a ``.prj`` must look like WKT
(``services_crs.user_crs`` then checks and parses it). Masks (``.msk``) and overviews (``.ovr``) are
TIFFs and are opened by ``services_gdal.open_raster``, each through the same gate as the raster.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from affine import Affine
from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT_SIDECAR_BYTES = 1024 * 1024  # .aux.xml, world files, .prj: larger ones are ignored
RASTER_EXTENSIONS = (".tif", ".tiff")


class SidecarKind(StrEnum):
    """What a companion file holds."""

    MASK = "mask"  # <raster>.msk: a TIFF of the per-dataset mask
    OVERVIEWS = "overviews"  # <raster>.ovr: a TIFF of reduced-resolution levels
    AUX_XML = "aux_xml"  # <raster>.aux.xml: GDAL's PAM: georeferencing, nodata, metadata
    WORLD_FILE = "world_file"  # <stem>.tfw / .tifw / .wld: the affine transform
    PRJ = "prj"  # <stem>.prj: the CRS as WKT


SIDECAR_SUFFIXES = (".msk", ".ovr", ".aux.xml", ".tfw", ".tifw", ".tiffw", ".wld", ".prj")
TIFF_KINDS = frozenset({SidecarKind.MASK, SidecarKind.OVERVIEWS})


def sidecar_names(blob: str) -> dict[str, SidecarKind]:
    """Every name GDAL would look for beside ``blob`` on a local disk -> what it would hold.

    ``d/scene.tif`` -> ``d/scene.tif.msk``, ``d/scene.tif.ovr``, ``d/scene.tif.aux.xml``, ``d/scene.tfw``,
    ``d/scene.tifw``, ``d/scene.wld``, ``d/scene.prj`` (and the upper-case extensions GDAL also tries).
    """
    path = PurePosixPath(blob)
    stem, ext = (str(path.with_suffix("")), path.suffix.lstrip(".")) if path.suffix else (blob, "")
    names: dict[str, SidecarKind] = {}
    for upper in (False, True):
        def case(text: str, upper: bool = upper) -> str:
            return text.upper() if upper else text
        names[f"{blob}.{case('msk')}"] = SidecarKind.MASK
        names[f"{blob}.{case('ovr')}"] = SidecarKind.OVERVIEWS
        names[f"{blob}.{case('aux.xml')}"] = SidecarKind.AUX_XML
        if ext:
            for world in dict.fromkeys((f"{ext[0]}{ext[-1]}w", f"{ext}w", "wld")):
                names[f"{stem}.{case(world.lower())}"] = SidecarKind.WORLD_FILE
        names[f"{stem}.{case('prj')}"] = SidecarKind.PRJ
    return names


def listing_prefix(blob: str) -> str:
    """The one listing prefix that finds every sidecar of ``blob`` (its name up to the last dot)."""
    path = PurePosixPath(blob)
    return str(path.with_suffix("")) + "." if path.suffix else blob


def is_sidecar_name(name: str) -> bool:
    """True for a name that only ever holds a companion of a raster (never an input of its own)."""
    return name.lower().endswith(SIDECAR_SUFFIXES)


def companions(names: list[str]) -> dict[str, list[str]]:
    """For a listing: each raster name -> the names of its sidecars in the listing."""
    present = set(names)
    found: dict[str, list[str]] = {}
    for name in names:
        if name.lower().endswith(RASTER_EXTENSIONS):
            mine = [n for n in sidecar_names(name) if n in present and n != name]
            if mine:
                found[name] = sorted(mine)
    return found


# ------------------------------------------------------------------------------------- text sidecars
class AuxInfo(BaseModel):
    """What an ``.aux.xml`` may change, after checking; ``ignored`` says what was left out and why."""

    model_config = ConfigDict(frozen=True)
    srs: str | None = None  # the CRS text (WKT, authority code or PROJJSON; checked by services_crs.user_crs)
    transform: tuple[float, float, float, float, float, float] | None = None  # affine a, b, c, d, e, f
    nodata: float | None = None  # band 1's NoDataValue
    metadata: dict[str, str] = Field(default_factory=dict)  # the default metadata domain
    ignored: list[str] = Field(default_factory=list)


AUX_ELEMENTS = {"SRS", "GeoTransform", "Metadata", "PAMRasterBand"}  # honoured under <PAMDataset>
BAND_ELEMENTS = {"NoDataValue"}  # honoured under <PAMRasterBand band="1">
NAMES_A_PLACE = re.compile(r"(/vsi|://|^\s*/|^\s*[A-Za-z]:\\|\.\./|<\s*VRTDataset)", re.IGNORECASE)
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class SidecarError(ValueError):
    """A sidecar that cannot be used as it is (the raster is then read without it, with a warning)."""


def _xml_root(content: bytes, name: str) -> ET.Element:
    """Parse without DTDs or entities (no external fetches, no entity expansion)."""
    if len(content) > MAX_TEXT_SIDECAR_BYTES:
        raise SidecarError(f"{name}: {len(content):,} bytes; sidecars over {MAX_TEXT_SIDECAR_BYTES:,} are not read")
    head = content[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in content.upper():
        raise SidecarError(f"{name}: DTDs and entities are not accepted")
    try:
        return ET.fromstring(content)
    except ET.ParseError as exc:
        raise SidecarError(f"{name}: not well-formed XML: {exc}") from None


def parse_aux_xml(content: bytes, name: str = ".aux.xml") -> AuxInfo:
    """The georeferencing, band-1 nodata and default-domain metadata of a GDAL PAM file.

    Everything else is ignored and listed in ``ignored``: other metadata domains (``OVERVIEWS`` names an
    overview file, ``xml:*``, ``RPC``, ``GEOLOCATION`` name files or models), GCPs, histograms, VRT
    redirects (``SourceFilename``), and any value that names a path or a URL. SidecarError when the file
    is not a ``<PAMDataset>`` at all.
    """
    root = _xml_root(content, name)
    if root.tag != "PAMDataset":
        raise SidecarError(f"{name}: a <{root.tag}> document, not a GDAL <PAMDataset>")
    out: dict[str, Any] = {"metadata": {}, "ignored": []}
    ignored: list[str] = out["ignored"]
    for child in root:
        text = (child.text or "").strip()
        if child.tag not in AUX_ELEMENTS:
            ignored.append(f"<{child.tag}>")
        elif NAMES_A_PLACE.search(text) and child.tag in ("SRS", "GeoTransform"):
            ignored.append(f"<{child.tag}> naming a path or URL")
        elif child.tag == "SRS" and text:
            out["srs"] = text
        elif child.tag == "GeoTransform":
            out["transform"] = _geotransform(text, name)
        elif child.tag == "Metadata":
            _metadata(child, out["metadata"], ignored)
        elif child.tag == "PAMRasterBand":
            _band(child, out, ignored)
    return AuxInfo(**out)


def _geotransform(text: str, name: str) -> tuple[float, ...]:
    """GDAL order (c, a, b, f, d, e) -> affine (a, b, c, d, e, f)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 6 or not all(re.fullmatch(NUMBER, p) for p in parts):
        raise SidecarError(f"{name}: <GeoTransform> must be 6 numbers, got {text[:100]!r}")
    c, a, b, f, d, e = (float(p) for p in parts)
    return _checked_affine(Affine(a, b, c, d, e, f), name)


def _checked_affine(transform: Affine, name: str) -> tuple[float, float, float, float, float, float]:
    a, b, c, d, e, f = values = tuple(transform)[:6]
    if not all(math.isfinite(v) for v in values) or transform.determinant == 0:
        raise SidecarError(f"{name}: the transform is degenerate or not finite: {values}")
    return a, b, c, d, e, f


def _metadata(element: ET.Element, into: dict[str, str], ignored: list[str]) -> None:
    domain = element.get("domain", "")
    if domain or element.get("format"):
        ignored.append(f"<Metadata domain={domain!r}>")
        return
    for item in element:
        key, value = item.get("key"), item.text or ""
        if item.tag != "MDI" or not key or len(key) > 200 or len(value) > 10_000:
            ignored.append(f"<{item.tag}> in <Metadata>")
        elif NAMES_A_PLACE.search(value):
            ignored.append(f"metadata {key!r} naming a path or URL")
        else:
            into[key] = value


def _band(element: ET.Element, out: dict[str, Any], ignored: list[str]) -> None:
    band = element.get("band")
    for child in element:
        if band != "1" or child.tag not in BAND_ELEMENTS:
            ignored.append(f"<PAMRasterBand band={band!r}><{child.tag}>")
            continue
        text = (child.text or "").strip()
        if text.lower() in ("nan", "-nan"):
            out["nodata"] = math.nan
        elif text.lower() in ("inf", "-inf") or re.fullmatch(NUMBER, text):
            out["nodata"] = float(text)
        else:
            ignored.append(f"<NoDataValue> {text[:40]!r}")


def parse_world_file(content: bytes, name: str = "world file") -> tuple[float, float, float, float, float, float]:
    """A world file's six numbers (x size, y rotation, x rotation, y size, x and y of the *centre* of the
    upper-left pixel) -> the affine transform of pixel *corners* (a, b, c, d, e, f), as GDAL reads it."""
    if len(content) > 4096:
        raise SidecarError(f"{name}: {len(content):,} bytes is not a world file (6 numbers)")
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        raise SidecarError(f"{name}: not ASCII text") from None
    parts = text.split()
    if len(parts) != 6 or not all(re.fullmatch(NUMBER, p) for p in parts):
        raise SidecarError(f"{name}: a world file is 6 numbers, one per line")
    a, d, b, e, c, f = (float(p) for p in parts)
    return _checked_affine(Affine(a, b, c - 0.5 * a - 0.5 * b, d, e, f - 0.5 * d - 0.5 * e), name)


WKT_ROOTS = ("PROJCS", "GEOGCS", "GEOCCS", "COMPD_CS", "PROJCRS", "GEOGCRS", "GEODCRS", "BOUNDCRS",
             "COMPOUNDCRS", "ENGCRS", "ENGCS", "VERTCRS", "VERT_CS")


def parse_prj(content: bytes, name: str = ".prj") -> str:
    """The WKT text of a ``.prj`` (ESRI or OGC WKT); SidecarError for anything else (a PROJ string, a
    path, a URL). The CRS itself is parsed later by ``services_crs.user_crs``."""
    if len(content) > 64 * 1024:
        raise SidecarError(f"{name}: {len(content):,} bytes is too long for a CRS")
    try:
        text = content.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise SidecarError(f"{name}: not UTF-8 text") from None
    root = text.split("[", 1)[0].strip().upper()
    if root not in WKT_ROOTS:
        raise SidecarError(f"{name}: not WKT (it starts {text[:40]!r})")
    return text

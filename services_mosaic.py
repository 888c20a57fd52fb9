"""Tiles on one grid: what each tile is (``tile_facts``), where it sits (``place_tiles``, which checks
that the tiles fit together), and the GDAL VRT that joins them (``mosaic_xml``).

Pure. Tiles are opened through ``services_gdal.open_user_raster`` (GeoTIFF only) before any VRT names
them; a VRT written here is opened by the app only with ``app_vrt=True``. ``mosaic_xml`` writes absolute
paths (the app's own assembly) or hrefs relative to the VRT (a mosaic users download with its tiles,
or open over HTTP next to them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags

from errors import TaskError
from services_gdal import RasterLimits, open_user_raster
from services_raster import crs_string

RGB = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32",
              "float64": "Float64", "complex64": "CFloat32", "complex128": "CFloat64"}
VRT_COLORINTERP = {ci: ci.name.capitalize() for ci in (ColorInterp.gray, ColorInterp.palette, ColorInterp.red,
                                                       ColorInterp.green, ColorInterp.blue, ColorInterp.alpha,
                                                       ColorInterp.undefined)}
MEDIA_TYPE_VRT = "application/x-gdal-vrt"  # GDAL's own (no IANA type exists)


@dataclass
class TileFacts:
    """One tile as GDAL sees it."""

    path: str
    transform: Affine
    crs: CRS
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    colorinterp: list[ColorInterp]
    descriptions: list[str | None]
    scales: list[float]
    offsets: list[float]
    mask: bool
    block: tuple[int, int]  # (width, height) of band 1's blocks
    tags: dict[str, str] = field(default_factory=dict)
    colormap: dict[str, Any] | None = None

    @property
    def crs_string(self) -> str:
        """'AUTHORITY:CODE' or WKT2, as ``create_cog`` names a CRS."""
        return crs_string(self.crs)

    @property
    def origin(self) -> tuple[float, float, float, float, float, float]:
        """The mosaic's geotransform when this tile is its top-left tile."""
        return tuple(self.transform)[:6]


def tile_facts(path: str, limits: RasterLimits | None = None) -> TileFacts:
    """Open one tile through the guard and describe it."""
    with open_user_raster(path, limits=limits) as src:
        flags = src.mask_flag_enums[0]
        rows, cols = src.block_shapes[0]
        return TileFacts(path=path, transform=src.transform, crs=src.crs, width=src.width, height=src.height,
                         count=src.count, dtype=src.dtypes[0], nodata=src.nodata, colorinterp=list(src.colorinterp),
                         descriptions=list(src.descriptions), scales=list(src.scales), offsets=list(src.offsets),
                         mask=MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags, block=(cols, rows),
                         tags=src.tags(), colormap=src.colormap(1) if src.colorinterp[0] is ColorInterp.palette
                         else None)


def place_tiles(tiles: list[TileFacts]) -> tuple[list[tuple[TileFacts, int, int]], int, int]:
    """((tile, col, row) in the order given, width, height) of the mosaic; TaskError when the tiles differ
    in CRS, bands, dtype, nodata, mask or resolution, are off the pixel grid, overlap or leave a gap."""
    first = tiles[0]
    t0 = first.transform
    for tile in tiles:
        t = tile.transform
        for key in ("crs", "count", "dtype", "mask"):
            if getattr(tile, key) != getattr(first, key):
                raise TaskError(f"tiles do not fit together: {tile.path} has {key} {getattr(tile, key)}, "
                                f"{first.path} has {getattr(first, key)}")
        if not _same_nodata(tile.nodata, first.nodata):
            raise TaskError(f"tiles do not fit together: nodata {tile.nodata} vs {first.nodata}")
        same_res = math.isclose(t.a, t0.a, rel_tol=1e-9) and math.isclose(t.e, t0.e, rel_tol=1e-9)
        if t.b or t.d or not same_res:
            raise TaskError(f"tiles do not fit together: {tile.path} has a different resolution or a "
                            f"rotated geotransform")
    x0 = min(t.transform.c for t in tiles)
    y0 = max(t.transform.f for t in tiles) if t0.e < 0 else min(t.transform.f for t in tiles)
    placed = []
    for tile in tiles:
        col, row = (tile.transform.c - x0) / t0.a, (tile.transform.f - y0) / t0.e
        if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
            raise TaskError(f"tiles do not fit together: {tile.path} is not aligned on the pixel grid")
        placed.append((tile, round(col), round(row)))
    width = max(col + tile.width for tile, col, _ in placed)
    height = max(row + tile.height for tile, _, row in placed)
    area = sum(tile.width * tile.height for tile, _, _ in placed)
    if area != width * height or len({(col, row) for _, col, row in placed}) != len(placed):
        raise TaskError(f"tiles do not cover the {width}x{height} raster exactly once ({area} pixels in "
                        f"{len(tiles)} tiles): a tile is missing or duplicated")
    return placed, width, height


def mosaic_xml(first: TileFacts, sources: list[tuple[str, int, int, int, int]], width: int, height: int,
               transform: Affine | None = None, relative: bool = False) -> str:
    """VRT XML of a ``width`` x ``height`` mosaic with ``first``'s bands, from ``sources`` (href, col, row,
    width, height); ``transform`` defaults to the grid of the source at (0, 0)."""
    if transform is None:
        transform = next(_shifted(first.transform, -col, -row) for href, col, row, _, _ in sources
                         if href == first.path)
    geotransform = ", ".join(repr(v) for v in (transform.c, transform.a, transform.b, transform.f, transform.d,
                                               transform.e))
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(first.crs.to_wkt())}</SRS>',
             f"  <GeoTransform>{geotransform}</GeoTransform>"]
    if first.tags:
        lines.append("  <Metadata>" + "".join(f"<MDI key={quoteattr(k)}>{escape(v)}</MDI>"
                                              for k, v in first.tags.items()) + "</Metadata>")
    for bidx in range(1, first.count + 1):
        lines.append(f'  <VRTRasterBand dataType="{GDAL_TYPES[first.dtype]}" band="{bidx}">')
        if first.nodata is not None:
            lines.append(f"    <NoDataValue>{_nodata_text(first.nodata)}</NoDataValue>")
        lines.append(f"    <ColorInterp>{VRT_COLORINTERP.get(first.colorinterp[bidx - 1], 'Undefined')}</ColorInterp>")
        if description := first.descriptions[bidx - 1]:
            lines.append(f"    <Description>{escape(description)}</Description>")
        lines.append(f"    <Offset>{first.offsets[bidx - 1]!r}</Offset><Scale>{first.scales[bidx - 1]!r}</Scale>")
        if bidx == 1 and first.colormap:
            lines.append("    <ColorTable>" + "".join(f'<Entry c1="{c[0]}" c2="{c[1]}" c3="{c[2]}" c4="{c[3]}"/>'
                                                      for _, c in sorted(first.colormap.items())) + "</ColorTable>")
        lines.extend(_sources(sources, str(bidx), relative))
        lines.append("  </VRTRasterBand>")
    if first.mask:
        lines.append('  <MaskBand><VRTRasterBand dataType="Byte">')
        lines.extend(_sources(sources, "mask,1", relative))
        lines.append("  </VRTRasterBand></MaskBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def _shifted(transform: Affine, cols: int, rows: int) -> Affine:
    return transform @ Affine.translation(cols, rows)


def _sources(sources: list[tuple[str, int, int, int, int]], band: str, relative: bool) -> list[str]:
    flag = "1" if relative else "0"
    return [f'    <SimpleSource><SourceFilename relativeToVRT="{flag}">{escape(href)}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            for href, col, row, w, h in sources]


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _nodata_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**63 else repr(value)

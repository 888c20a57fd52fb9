"""Huge rasters in pieces: ``plan_tiles`` -> ``process_tile`` (one task each) -> ``assemble_tiles``.

Pure. Tiles are lossless GeoTIFFs on the source's own pixel grid (same dtype, nodata, alpha, mask,
colour interpretation); ``assemble_tiles`` stitches them with a VRT and runs the same COG translation as
``create_cog``, so the result has the same bounds, CRS, resolution and pixel values as the single-task
path. Reprojection (``options.target_crs``) happens once, at assembly, for the same reason.
Every open goes through ``services_gdal.open_user_raster``; the mosaic VRT is the only VRT ever opened
(``app_vrt=True``), and its sources are tiles that were opened through the guard first.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import rasterio
from pydantic import BaseModel, Field
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window

from errors import TaskError, TooLargeError
from services_cog import CogOptions, CogResult, translate_to_cog
from services_gdal import GDAL_ERRORS, RasterLimits, gdal_message, open_user_raster
from services_raster import RasterInfo, validate_raster

logger = logging.getLogger(__name__)

TILE_BLOCKSIZE = 512
GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32",
              "float64": "Float64", "complex64": "CFloat32", "complex128": "CFloat64"}
VRT_COLORINTERP = {ci: ci.name.capitalize() for ci in (ColorInterp.gray, ColorInterp.palette, ColorInterp.red,
                                                       ColorInterp.green, ColorInterp.blue, ColorInterp.alpha,
                                                       ColorInterp.undefined)}


class TileWindow(BaseModel):
    """One tile of the source grid, in pixels; edge tiles are smaller."""

    index: int
    col_off: int
    row_off: int
    width: int = Field(gt=0)
    height: int = Field(gt=0)

    @property
    def window(self) -> Window:
        """The rasterio Window."""
        return Window(self.col_off, self.row_off, self.width, self.height)


class TileResult(BaseModel):
    """A tile written by ``process_tile``."""

    path: str
    tile: TileWindow
    bounds: tuple[float, float, float, float]
    file_size: int


def plan_tiles(source: RasterInfo | str | Path, tile_size: int, max_tiles: int | None = None) -> list[TileWindow]:
    """Cut the raster into ``tile_size`` x ``tile_size`` windows, row by row.

    Use a multiple of the source's block size (and of 512) so each tile reads whole blocks.
    TooLargeError (before any window is made) when that is more than ``max_tiles`` tiles.
    """
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    info = source if isinstance(source, RasterInfo) else validate_raster(source)
    count = math.ceil(info.width / tile_size) * math.ceil(info.height / tile_size)
    if max_tiles is not None and count > max_tiles:
        raise TooLargeError(f"too_large: {info.path}: {info.width:,} x {info.height:,} pixels in {tile_size} px "
                            f"tiles is {count:,} tiles; the limit is {max_tiles:,} (MAX_TILES_PER_JOB): use a "
                            f"larger tile_size")
    tiles = []
    for row_off in range(0, info.height, tile_size):
        for col_off in range(0, info.width, tile_size):
            tiles.append(TileWindow(index=len(tiles), col_off=col_off, row_off=row_off,
                                    width=min(tile_size, info.width - col_off),
                                    height=min(tile_size, info.height - row_off)))
    return tiles


def process_tile(src_path: str | Path, tile: TileWindow, dst_path: str | Path,
                 options: CogOptions | None = None, limits: RasterLimits | None = None, *,
                 remote_url: str | None = None, head: bytes | None = None) -> TileResult:
    """Copy one window of ``src_path`` to a lossless tiled GeoTIFF with the window's geotransform.

    Reads and writes one row of 512 px blocks at a time, so memory stays small for any tile size.
    ``options`` is accepted for symmetry with the other steps: tiles are intermediate, so they are
    always lossless DEFLATE whatever the final profile is. A remote source is ``/vsicurl/<remote_url>?<sas>``
    with ``head`` its first bytes (see ``open_user_raster``).
    """
    dst_path = Path(dst_path)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    partial = dst_path.with_name(f".{dst_path.name}.partial")
    try:
        with open_user_raster(src_path, limits=limits, remote_url=remote_url, head=head) as src:
            if src.transform.is_identity:
                raise TaskError(f"cannot tile {src_path}: it has no geotransform (ground control points "
                                f"only); use create_cog on the whole raster")
            if (tile.col_off + tile.width > src.width or tile.row_off + tile.height > src.height
                    or tile.col_off < 0 or tile.row_off < 0):
                raise ValueError(f"tile {tile} is outside the {src.width}x{src.height} raster")
            flags = src.mask_flag_enums[0]
            internal_mask = MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
            profile = {"driver": "GTiff", "width": tile.width, "height": tile.height, "count": src.count,
                       "dtype": src.dtypes[0], "crs": src.crs,
                       "transform": src.window_transform(tile.window), "nodata": src.nodata,
                       "tiled": True, "blockxsize": TILE_BLOCKSIZE, "blockysize": TILE_BLOCKSIZE,
                       "compress": "DEFLATE", "interleave": "pixel", "BIGTIFF": "IF_SAFER"}
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(partial, "w", **profile) as dst:
                dst.colorinterp = src.colorinterp
                if src.colorinterp[0] is ColorInterp.palette:
                    dst.write_colormap(1, src.colormap(1))
                for bidx in src.indexes:
                    dst.set_band_description(bidx, src.descriptions[bidx - 1])
                dst.update_tags(**src.tags())
                dst.scales, dst.offsets = src.scales, src.offsets
                for row in range(0, tile.height, TILE_BLOCKSIZE):
                    rows = min(TILE_BLOCKSIZE, tile.height - row)
                    read = Window(tile.col_off, tile.row_off + row, tile.width, rows)
                    write = Window(0, row, tile.width, rows)
                    dst.write(src.read(window=read), window=write)
                    if internal_mask:
                        dst.write_mask(src.dataset_mask(window=read), window=write)
                bounds = tuple(dst.bounds)
        partial.replace(dst_path)
    except GDAL_ERRORS as exc:
        raise TaskError(f"could not write tile {tile.index} of {src_path}: {gdal_message(exc)}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return TileResult(path=str(dst_path), tile=tile, bounds=bounds, file_size=dst_path.stat().st_size)


def assemble_tiles(tile_paths: list[str | Path], dst_path: str | Path,
                   options: CogOptions | None = None, limits: RasterLimits | None = None) -> CogResult:
    """Stitch tiles from ``process_tile`` (any order) into one COG, exactly as ``create_cog`` would.

    TaskError if a tile is missing, unreadable, or does not fit the others (CRS, resolution, bands,
    dtype, nodata, pixel alignment, full coverage without overlap).
    """
    options = options or CogOptions()
    if not tile_paths:
        raise TaskError("no tiles to assemble")
    work_parent = Path(options.tmp_dir) if options.tmp_dir else Path(dst_path).parent
    work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".assemble-", dir=work_parent))
    try:
        vrt_path = work / "mosaic.vrt"
        vrt_path.write_text(_mosaic_vrt([str(Path(p).resolve()) for p in tile_paths], limits))
        info = validate_raster(vrt_path, limits, app_vrt=True)
        return translate_to_cog(vrt_path, dst_path, options, info, limits, app_vrt=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _mosaic_vrt(paths: list[str], limits: RasterLimits | None = None) -> str:
    """VRT XML placing every tile on one grid; checks that the tiles fit together."""
    tiles = []
    for path in paths:
        with open_user_raster(path, limits=limits) as src:
            flags = src.mask_flag_enums[0]
            palette = src.colorinterp[0] is ColorInterp.palette
            tiles.append({"path": path, "transform": src.transform, "crs": src.crs, "width": src.width,
                          "height": src.height, "count": src.count, "dtype": src.dtypes[0],
                          "nodata": src.nodata, "colorinterp": src.colorinterp,
                          "descriptions": src.descriptions, "tags": src.tags(), "scales": src.scales,
                          "offsets": src.offsets, "colormap": src.colormap(1) if palette else None,
                          "mask": MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags})
    first = tiles[0]
    t0 = first["transform"]
    for tile in tiles:
        t = tile["transform"]
        for key in ("crs", "count", "dtype", "mask"):
            if tile[key] != first[key]:
                raise TaskError(f"tiles do not fit together: {tile['path']} has {key} {tile[key]}, "
                                f"{first['path']} has {first[key]}")
        if not _same_nodata(tile["nodata"], first["nodata"]):
            raise TaskError(f"tiles do not fit together: nodata {tile['nodata']} vs {first['nodata']}")
        same_res = math.isclose(t.a, t0.a, rel_tol=1e-9) and math.isclose(t.e, t0.e, rel_tol=1e-9)
        if t.b or t.d or not same_res:
            raise TaskError(f"tiles do not fit together: {tile['path']} has a different resolution or a "
                            f"rotated geotransform")
    x0 = min(t["transform"].c for t in tiles)
    y0 = max(t["transform"].f for t in tiles) if t0.e < 0 else min(t["transform"].f for t in tiles)
    placed = []
    for tile in tiles:
        col, row = (tile["transform"].c - x0) / t0.a, (tile["transform"].f - y0) / t0.e
        if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
            raise TaskError(f"tiles do not fit together: {tile['path']} is not aligned on the pixel grid")
        placed.append((tile, round(col), round(row)))
    width = max(col + tile["width"] for tile, col, _ in placed)
    height = max(row + tile["height"] for tile, _, row in placed)
    area = sum(tile["width"] * tile["height"] for tile, _, _ in placed)
    if area != width * height:
        raise TaskError(f"tiles do not cover the {width}x{height} raster exactly once ({area} pixels in "
                        f"{len(tiles)} tiles): a tile is missing or duplicated")
    geotransform = ", ".join(repr(v) for v in (x0, t0.a, 0.0, y0, 0.0, t0.e))
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(first["crs"].to_wkt())}</SRS>',
             f"  <GeoTransform>{geotransform}</GeoTransform>"]
    if first["tags"]:
        lines.append("  <Metadata>" + "".join(f"<MDI key={quoteattr(k)}>{escape(v)}</MDI>"
                                              for k, v in first["tags"].items()) + "</Metadata>")
    for bidx in range(1, first["count"] + 1):
        lines.append(f'  <VRTRasterBand dataType="{GDAL_TYPES[first["dtype"]]}" band="{bidx}">')
        if first["nodata"] is not None:
            lines.append(f"    <NoDataValue>{_nodata_text(first['nodata'])}</NoDataValue>")
        lines.append(f"    <ColorInterp>{VRT_COLORINTERP.get(first['colorinterp'][bidx - 1], 'Undefined')}"
                     f"</ColorInterp>")
        if first["descriptions"][bidx - 1]:
            lines.append(f"    <Description>{escape(first['descriptions'][bidx - 1])}</Description>")
        lines.append(f"    <Offset>{first['offsets'][bidx - 1]!r}</Offset>"
                     f"<Scale>{first['scales'][bidx - 1]!r}</Scale>")
        if bidx == 1 and first["colormap"]:
            lines.append("    <ColorTable>" + "".join(
                f'<Entry c1="{c[0]}" c2="{c[1]}" c3="{c[2]}" c4="{c[3]}"/>'
                for _, c in sorted(first["colormap"].items())) + "</ColorTable>")
        lines.extend(_sources(placed, str(bidx)))
        lines.append("  </VRTRasterBand>")
    if first["mask"]:
        lines.append('  <MaskBand><VRTRasterBand dataType="Byte">')
        lines.extend(_sources(placed, "mask,1"))
        lines.append("  </VRTRasterBand></MaskBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def _sources(placed: list[tuple[dict, int, int]], source_band: str) -> list[str]:
    return [f'    <SimpleSource><SourceFilename relativeToVRT="0">{escape(tile["path"])}</SourceFilename>'
            f"<SourceBand>{source_band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{tile["width"]}" ySize="{tile["height"]}"/>'
            f'<DstRect xOff="{col}" yOff="{row}" xSize="{tile["width"]}" ySize="{tile["height"]}"/>'
            f"</SimpleSource>" for tile, col, row in placed]


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _nodata_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**63 else repr(value)

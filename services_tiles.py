"""Huge rasters in pieces: ``plan_tiles`` -> ``process_tile`` (one task each, in parallel) ->
``assemble_tiles`` (one COG, ``services_assemble``) or ``mosaic_vrt`` (the tiles stay COGs of their
own, a GDAL VRT joins them).

Each tile does its share of the work once: it reads its window (reprojected when asked: tiles cut the
output grid ``create_cog`` would make), writes it straight from the source in the final COG's
compression, predictor and 512 px blocks, builds its own overviews in place, and is rewritten in the
COG layout (``services_tiff_write.pack_tiff``, copying its blocks), so every tile is a valid COG. Tiles are
multiples of the block size and start on the block grid, so the assembly copies their blocks.

Same pixels as ``create_cog``: tiles follow its rules (nodata kept; data under alpha = 0, or under a
Byte/UInt16 mask, written as 0; masks as internal masks; the same colour interpretation, metadata and
creation options), so the assembled COG has the same directories and blocks as a single ``create_cog``.
Sidecars are not read: tiles, like the plan, see the ``.tif`` alone.

Every open of a tile or a source goes through ``services_gdal.open_user_raster``; the mosaic VRT is the
only VRT ever opened (``app_vrt=True``), and its sources are tiles that were opened through the guard.
"""
from __future__ import annotations

import logging
import math
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import rasterio
from affine import Affine
from pydantic import BaseModel, Field
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.rio.overview import get_maximum_overview_level
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from errors import TaskError, TooLargeError
from services_assemble import assemble_tiles, tile_levels
from services_cog import cog_env, gdal_cache_limit
from services_cog_options import ALPHA_MASK_DTYPES, CogOptions, creation_options
from services_gdal import GDAL_ERRORS, RasterLimits, check_limits, gdal_message, open_user_raster
from services_mosaic import RGB, mosaic_xml, tile_facts
from services_raster import RasterInfo, crs_string
from services_source import RasterSource, as_source
from services_tiff import TiffError
from services_tiff_write import pack_levels, pack_tiff

__all__ = ["TileGrid", "TileResult", "TileWindow", "assemble_tiles", "mosaic_vrt", "output_grid", "plan_grid",
           "plan_tiles", "process_tile", "tile_levels"]
logger = logging.getLogger(__name__)

COLUMN_CHUNK = 4096  # px read at once across a tile: a read is at most one block row of this width


class TileWindow(BaseModel):
    """One tile of the output grid, in pixels; edge tiles are smaller."""

    index: int
    col_off: int
    row_off: int
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    levels: int = Field(0, ge=0, description="overview levels the assembled COG copies from this tile")

    @property
    def window(self) -> Window:
        """The rasterio Window."""
        return Window(self.col_off, self.row_off, self.width, self.height)


class TileGrid(BaseModel):
    """The pixel grid tiles cut: the source's own, or the reprojected grid ``create_cog`` would write."""

    width: int
    height: int
    crs: str
    transform: tuple[float, float, float, float, float, float]


class TileResult(BaseModel):
    """A tile written by ``process_tile``."""

    path: str
    tile: TileWindow
    grid: TileGrid
    bounds: tuple[float, float, float, float]
    file_size: int
    overview_levels: int


class Layers(NamedTuple):
    """How a view's bands become a tile's: the rules ``create_cog`` follows."""

    data: list[int]  # bands written, in order
    alpha: int | None  # an alpha band whose 0s mark invalid pixels
    mask: str | None  # None, "dataset" (the view's mask) or "alpha" (alpha > 0)
    zero_invalid: bool  # data under invalid pixels written as 0
    nodata: float | None


# ------------------------------------------------------------------------------------------ plan
def output_grid(src: DatasetReader, options: CogOptions, limits: RasterLimits | None = None) -> TileGrid:
    """The grid of the COG ``create_cog`` writes from the open dataset ``src`` with ``options``."""
    if not options.target_crs:
        return TileGrid(width=src.width, height=src.height, crs=crs_string(src.crs), transform=tuple(src.transform)[:6])
    with WarpedVRT(src, **_warp_kwargs(src, options)) as vrt:
        check_limits(vrt, limits or RasterLimits(), f"{src.name} reprojected to the target CRS")
        return TileGrid(width=vrt.width, height=vrt.height, crs=crs_string(vrt.crs), transform=tuple(vrt.transform)[:6])


def plan_grid(source: str | Path | RasterSource, options: CogOptions | None = None,
              limits: RasterLimits | None = None) -> TileGrid:
    """The grid ``create_cog`` would write from ``source`` with ``options`` (what tiles cut)."""
    with _open_source(source, limits) as src:
        return output_grid(src, options or CogOptions(), limits)


def plan_tiles(source: RasterInfo | str | Path | RasterSource, tile_size: int, max_tiles: int | None = None,
               options: CogOptions | None = None, limits: RasterLimits | None = None,
               grid: TileGrid | None = None) -> list[TileWindow]:
    """Cut the output grid (the source's, or the reprojected one: ``grid``, else ``plan_grid``) into
    ``tile_size`` windows, row by row.

    ``tile_size`` a multiple of the block size (512) lets ``assemble_tiles`` copy compressed blocks.
    TooLargeError (before any window is made) when that is more than ``max_tiles`` tiles.
    """
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    options = options or CogOptions()
    if grid is None:
        if isinstance(source, RasterInfo) and not options.target_crs:
            grid = TileGrid(width=source.width, height=source.height, crs=source.crs, transform=source.transform)
        else:
            grid = plan_grid(source.path if isinstance(source, RasterInfo) else source, options, limits)
    width, height = grid.width, grid.height
    count = math.ceil(width / tile_size) * math.ceil(height / tile_size)
    if max_tiles is not None and count > max_tiles:
        name = source.path if isinstance(source, RasterInfo) else as_source(source).name
        raise TooLargeError(f"too_large: {name}: {width:,} x {height:,} pixels in {tile_size} px "
                            f"tiles is {count:,} tiles; the limit is {max_tiles:,} (MAX_TILES_PER_JOB): use a "
                            f"larger tile_size")
    levels = tile_levels(width, height, tile_size, options.blocksize, options.overview_resampling)
    return [TileWindow(index=row // tile_size * math.ceil(width / tile_size) + col // tile_size, col_off=col,
                       row_off=row, width=min(tile_size, width - col), height=min(tile_size, height - row),
                       levels=levels)
            for row in range(0, height, tile_size) for col in range(0, width, tile_size)]


# ------------------------------------------------------------------------------------------ tile
def _open_source(source: str | Path | RasterSource, limits: RasterLimits | None, remote_url: str | None = None,
                 head: bytes | None = None) -> AbstractContextManager[DatasetReader]:
    """``open_user_raster`` of a path (with ``remote_url``/``head`` for a URL) or of a ``RasterSource``."""
    if isinstance(source, RasterSource):
        return open_user_raster(source.path, limits=limits, remote_url=source.remote_url, head=source.head)
    return open_user_raster(source, limits=limits, remote_url=remote_url, head=head)


def process_tile(src_path: str | Path | RasterSource, tile: TileWindow, dst_path: str | Path,
                 options: CogOptions | None = None, limits: RasterLimits | None = None, *,
                 remote_url: str | None = None, head: bytes | None = None) -> TileResult:
    """Write one window of the output grid as a COG in the final profile, with its own overviews (at
    least ``tile.levels``). Reads at most one block row (of up to 4096 px) at a time. A remote source is
    a ``RasterSource``, or ``/vsicurl/<remote_url>?<sas>`` with ``head`` its first bytes (see
    ``open_user_raster``)."""
    options = options or CogOptions()
    name = as_source(src_path).name
    dst_path = Path(dst_path)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    partial = dst_path.with_name(f".{dst_path.name}.partial")
    packed = dst_path.with_name(f".{dst_path.name}.packed")
    try:
        with ExitStack() as stack:
            src = stack.enter_context(_open_source(src_path, limits, remote_url, head))
            if src.transform.is_identity:
                raise TaskError(f"cannot tile {name}: it has no geotransform (ground control points "
                                f"only); use create_cog on the whole raster")
            grid = output_grid(src, options, limits)
            if (tile.col_off < 0 or tile.row_off < 0 or tile.col_off + tile.width > grid.width
                    or tile.row_off + tile.height > grid.height):
                raise ValueError(f"tile {tile} is outside the {grid.width}x{grid.height} grid")
            info = _facts(src)
            dst_kwargs, add_mask, _ = creation_options(info, options)
            view, alpha_added = src, False
            if options.target_crs:
                kwargs = _warp_kwargs(src, options)
                alpha_added = bool(kwargs.get("add_alpha"))
                view = stack.enter_context(WarpedVRT(src, **kwargs, transform=Affine(*grid.transform),
                                                     width=grid.width, height=grid.height))
            layers = _layers(view, info, add_mask or alpha_added, alpha_added)
            levels = max(tile.levels, get_maximum_overview_level(tile.width, tile.height, minsize=options.blocksize))
            with cog_env(options), gdal_cache_limit(options.gdal_cachemax_mb):
                files = _write_tile(view, layers, tile, partial, dst_kwargs, options, levels)
        size = pack_levels(files, packed) if len(files) > 1 else pack_tiff(partial, packed)
        with open_user_raster(packed, limits=limits) as out:
            bounds = tuple(out.bounds)
        packed.replace(dst_path)
    except GDAL_ERRORS + (TiffError,) as exc:
        raise TaskError(f"could not write tile {tile.index} of {name}: {gdal_message(exc)}") from exc
    finally:
        for leftover in (partial, packed, *partial.parent.glob(f"{partial.name}.*")):
            leftover.unlink(missing_ok=True)
    return TileResult(path=str(dst_path), tile=tile, grid=grid, bounds=bounds, file_size=size,
                      overview_levels=levels)


def _warp_kwargs(src: DatasetReader, options: CogOptions) -> dict[str, Any]:
    """The WarpedVRT ``create_cog`` reprojects through (without its output grid)."""
    kwargs: dict[str, Any] = {"crs": options.target_crs, "resampling": Resampling[options.resampling]}
    if src.nodata is not None:
        kwargs.update(src_nodata=src.nodata, nodata=src.nodata)
    elif ColorInterp.alpha not in src.colorinterp:
        kwargs["add_alpha"] = True
    return kwargs


def _facts(src: DatasetReader) -> RasterInfo:
    """What ``creation_options`` reads of a raster, from an open dataset (no second validation)."""
    flags = src.mask_flag_enums[0]
    return RasterInfo.model_construct(  # type: ignore[call-arg]  # partial on purpose: only what is read
        path=src.name, dtypes=list(src.dtypes), count=src.count, nodata=src.nodata,
        colorinterp=[ci.name for ci in src.colorinterp], has_alpha=ColorInterp.alpha in src.colorinterp,
        has_mask=MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags)


def _layers(view: DatasetReader | WarpedVRT, info: RasterInfo, add_mask: bool, alpha_added: bool) -> Layers:
    """``create_cog``'s rules for the bands, mask and nodata of ``view``."""
    every = list(view.indexes)
    if alpha_added:  # reprojected without nodata or alpha: the warper's alpha becomes the mask
        return Layers(every[:-1], view.count, "alpha", True, None)
    if info.nodata is not None:
        return Layers(every, None, "dataset" if add_mask else None, False, None if add_mask else info.nodata)
    if ColorInterp.alpha in view.colorinterp:
        alpha = view.colorinterp.index(ColorInterp.alpha) + 1
        if add_mask:  # jpeg: the alpha band becomes the mask
            return Layers([b for b in every if b != alpha], alpha, "alpha", True, None)
        return Layers(every, alpha, None, True, None)
    if info.has_mask:
        return Layers(every, None, "dataset", view.dtypes[0] in ALPHA_MASK_DTYPES, None)
    return Layers(every, None, None, False, None)


def _write_tile(view: DatasetReader | WarpedVRT, layers: Layers, tile: TileWindow, path: Path,
                dst_kwargs: dict[str, Any], options: CogOptions, levels: int) -> list[Path]:
    """Write the tile compressed, straight from ``view``, with its ``levels`` overviews; the files to pack.

    Nearest overviews are sampled from each row of blocks as it is read, with GDAL's own rules (pixel
    ``i`` of a level is pixel ``int(0.5 + i * ratio)`` of the level above; a mask level samples the
    full-resolution mask), each level in a file of its own: no pixel is decoded again. Other kernels:
    GDAL builds them in place, from the written tile.
    """
    colorinterp = [view.colorinterp[b - 1] for b in layers.data]
    if len(layers.data) == 1 and colorinterp[0] is not ColorInterp.palette:
        colorinterp = [ColorInterp.gray]
    profile = {**dst_kwargs, "driver": "GTiff", "count": len(layers.data), "dtype": view.dtypes[0],
               "crs": view.crs, "nodata": layers.nodata}
    if "photometric" not in profile:  # as GDAL's CreateCopy chooses it
        profile["photometric"] = "RGB" if tuple(colorinterp[:3]) == RGB else "MINISBLACK"
    sampled = levels if options.overview_resampling == "nearest" else 0
    rows, cols = [np.arange(tile.height)], [np.arange(tile.width)]
    mask_rows, mask_cols = [rows[0]], [cols[0]]
    for level in range(1, sampled + 1):
        height, width = math.ceil(tile.height / 2**level), math.ceil(tile.width / 2**level)
        rows.append(rows[-1][_nearest(len(rows[-1]), height)])
        cols.append(cols[-1][_nearest(len(cols[-1]), width)])
        mask_rows.append(_nearest(tile.height, height))
        mask_cols.append(_nearest(tile.width, width))
    files = [path, *(path.with_name(f"{path.name}.{level}") for level in range(1, sampled + 1))]
    transform = view.window_transform(tile.window)
    with ExitStack() as stack:
        outs = []
        for level, file in enumerate(files):
            out = stack.enter_context(rasterio.open(
                file, "w", **profile, width=len(cols[level]), height=len(rows[level]),
                transform=transform @ Affine.scale(tile.width / len(cols[level]), tile.height / len(rows[level]))))
            out.colorinterp = colorinterp
            if colorinterp[0] is ColorInterp.palette:
                out.write_colormap(1, view.colormap(1))
            outs.append(out)
        chunk = max(options.blocksize, COLUMN_CHUNK // options.blocksize * options.blocksize)
        for row in range(0, tile.height, options.blocksize):
            for col in range(0, tile.width, chunk):
                window = Window(tile.col_off + col, tile.row_off + row, min(chunk, tile.width - col),
                                min(options.blocksize, tile.height - row))
                data, mask = _read_layers(view, layers, window)
                for level, out in enumerate(outs):
                    _write_sampled(out.write, data, rows[level], cols[level], row, col, window)
                    if mask is not None:
                        _write_sampled(out.write_mask, mask, mask_rows[level], mask_cols[level], row, col, window)
        dst = outs[0]
        if levels and not sampled:
            dst.build_overviews([2**j for j in range(1, levels + 1)], Resampling[options.overview_resampling])
        for out_index, index in enumerate(layers.data, start=1):
            dst.set_band_description(out_index, view.descriptions[index - 1])
        dst.update_tags(**view.tags(), OVERVIEW_RESAMPLING=options.overview_resampling.upper())
        dst.scales = [view.scales[b - 1] for b in layers.data]
        dst.offsets = [view.offsets[b - 1] for b in layers.data]
    return files


def _nearest(size: int, out_size: int) -> np.ndarray:
    """GDAL's nearest overview: which of ``size`` pixels each of ``out_size`` takes."""
    picked = (0.5 + np.arange(out_size, dtype=np.float64) * (size / out_size)).astype(np.int64)
    return np.minimum(picked, size - 1)


def _read_layers(view: DatasetReader | WarpedVRT, layers: Layers,
                 window: Window) -> tuple[np.ndarray, np.ndarray | None]:
    """(data, mask) of a window, by ``create_cog``'s rules; mask None when the tile has none."""
    data = view.read(indexes=layers.data, window=window)
    alpha = view.read(layers.alpha, window=window) if layers.alpha else None
    mask = (np.where(alpha > 0, 255, 0).astype("uint8") if alpha is not None
            else view.dataset_mask(window=window) if layers.mask or layers.zero_invalid else None)
    if layers.zero_invalid:
        bands = [i for i, b in enumerate(layers.data) if b != layers.alpha]
        data[bands] = np.where(mask == 0, 0, data[bands])
    return data, mask if layers.mask else None


def _write_sampled(write: Callable[..., None], pixels: np.ndarray, rows: np.ndarray, cols: np.ndarray, row: int,
                   col: int, window: Window) -> None:
    """Write (``write``: a dataset's ``write`` or ``write_mask``) the pixels of one level that the level
    takes from the window read (at ``row``, ``col`` of the tile)."""
    top, bottom = np.searchsorted(rows, [row, row + window.height])
    left, right = np.searchsorted(cols, [col, col + window.width])
    if top == bottom or left == right:
        return
    picked = pixels[(..., _pick(rows[top:bottom] - row), slice(None))][(..., _pick(cols[left:right] - col))]
    write(np.ascontiguousarray(picked), window=Window(left, top, right - left, bottom - top))


def _pick(indices: np.ndarray) -> slice | np.ndarray:
    """A slice where the indices are evenly spaced (every pixel, every 2nd, ...: no copy), else them."""
    step = int(indices[1] - indices[0]) if len(indices) > 1 else 1
    if step > 0 and np.array_equal(indices, np.arange(indices[0], indices[0] + step * len(indices), step)):
        return slice(int(indices[0]), int(indices[0]) + step * len(indices), step)
    return indices


def mosaic_vrt(first_tile: str | Path, hrefs: list[str], tiles: list[TileWindow], grid: TileGrid,
               limits: RasterLimits | None = None) -> str:
    """VRT XML of a tiled output: the tiles at ``hrefs`` (relative to the VRT) placed at their windows on
    ``grid``; bands, nodata, mask and metadata from ``first_tile`` (a local copy of one of them)."""
    facts = tile_facts(str(first_tile), limits)
    sources = [(href, t.col_off, t.row_off, t.width, t.height) for href, t in zip(hrefs, tiles, strict=True)]
    return mosaic_xml(facts, sources, grid.width, grid.height, Affine(*grid.transform), relative=True)

"""Huge rasters in pieces: ``plan_tiles`` -> ``process_tile`` (one task each, in parallel) ->
``assemble_tiles`` (one COG) or ``mosaic_vrt`` (the tiles stay COGs of their own, a VRT joins them).

Each tile does its share of the work once: it reads its window (reprojected when asked: tiles cut the
output grid ``create_cog`` would make), writes it in the final COG's compression, predictor and
512 px blocks, builds its own overviews, and is a valid COG itself. Tiles are multiples of the block
size and start on the block grid, so ``assemble_tiles`` decodes and encodes none of those pixels: it
copies the tiles' compressed blocks into the COG's layout (``services_tiff``) and computes only the
overview levels the tiles cannot give, from the finest level they do give.

Same pixels as ``create_cog``: tiles keep its rules (nodata kept, data under alpha = 0 or under a
Byte/UInt16 mask written as 0, masks as internal masks). A tile's overview level equals the whole
raster's only when GDAL's overview of the whole samples the same pixels: nearest resampling, and every
level above it of even width and height (``tile_levels``); the other levels come from a small mosaic
of the finest exact level, through GDAL's own overview code. With jpeg and webp those coarser levels
are computed from the decoded tiles, so they can differ slightly from a single ``create_cog``. Tiles
that cannot be copied (another profile, grid or CRS) are assembled the old way: a mosaic VRT converted
by ``create_cog``'s translation (every pixel re-encoded).

Every open of a tile or a source goes through ``services_gdal.open_user_raster``; the mosaic VRT is the
only VRT ever opened (``app_vrt=True``), and its sources are tiles that were opened through the guard.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import numpy as np
import rasterio
from affine import Affine
from pydantic import BaseModel, Field
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.io import MemoryFile
from rasterio.rio.overview import get_maximum_overview_level
from rasterio.shutil import copy as rio_copy
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from errors import TaskError, TooLargeError
from services_cog import (
    ALPHA_MASK_DTYPES, CogOptions, CogResult, creation_options, gdal_cache_limit, translate_to_cog,
)
from services_gdal import GDAL_ERRORS, RasterLimits, check_limits, gdal_message, open_user_raster
from services_mosaic import RGB, TileFacts, mosaic_xml, place_tiles, tile_facts
from services_raster import RasterInfo, crs_string, validate_raster
from services_source import RasterSource, as_source
from services_tiff import BlockRef, Image, TiffError, TiffFile, image_tags, read_tiff, write_cog

logger = logging.getLogger(__name__)

EXACT_TILE_RESAMPLING = frozenset({"nearest"})  # tile overviews equal the whole raster's (when sizes allow)
COLUMN_CHUNK = 4096  # px read at once across a tile: a read is at most one block row of this width
COMPRESSION_CODES = {"deflate": {8, 32946}, "lzw": {5}, "zstd": {50000}, "webp": {50001}, "jpeg": {7}}


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
def tile_levels(width: int, height: int, tile_size: int, blocksize: int, resampling: str) -> int:
    """How many overview levels tiles of ``tile_size`` can give the whole raster's COG exactly: each
    level starts on the block grid, and GDAL's overview of the whole raster samples the same pixels as
    each tile's (nearest resampling; width and height divisible by 2 at every level above)."""
    if resampling not in EXACT_TILE_RESAMPLING or tile_size % blocksize:
        return 0
    total = get_maximum_overview_level(width, height, minsize=blocksize)
    levels = 0
    while (levels < total and tile_size % (blocksize * 2 ** (levels + 1)) == 0
           and (width <= tile_size or width % 2 ** (levels + 1) == 0)
           and (height <= tile_size or height % 2 ** (levels + 1) == 0)):
        levels += 1
    return levels


def output_grid(src, options: CogOptions, limits: RasterLimits | None = None) -> TileGrid:
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
                 head: bytes | None = None):
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
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True, GDAL_TIFF_OVR_BLOCKSIZE=str(options.blocksize),
                              GDAL_NUM_THREADS=options.threads), gdal_cache_limit(options.gdal_cachemax_mb):
                _write_tile(view, layers, tile, partial, dst_kwargs, options, levels)
        size = pack_tiff(partial, dst_path)
        with open_user_raster(dst_path, limits=limits) as out:
            bounds = tuple(out.bounds)
    except GDAL_ERRORS + (TiffError,) as exc:
        raise TaskError(f"could not write tile {tile.index} of {name}: {gdal_message(exc)}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return TileResult(path=str(dst_path), tile=tile, bounds=bounds, file_size=size, overview_levels=levels)


def _warp_kwargs(src, options: CogOptions) -> dict:
    """The WarpedVRT ``create_cog`` reprojects through (without its output grid)."""
    kwargs: dict = {"crs": options.target_crs, "resampling": Resampling[options.resampling]}
    if src.nodata is not None:
        kwargs.update(src_nodata=src.nodata, nodata=src.nodata)
    elif ColorInterp.alpha not in src.colorinterp:
        kwargs["add_alpha"] = True
    return kwargs


def _facts(src) -> RasterInfo:
    """What ``creation_options`` reads of a raster, from an open dataset (no second validation)."""
    flags = src.mask_flag_enums[0]
    return RasterInfo.model_construct(
        path=src.name, dtypes=list(src.dtypes), count=src.count, nodata=src.nodata,
        colorinterp=[ci.name for ci in src.colorinterp], has_alpha=ColorInterp.alpha in src.colorinterp,
        has_mask=MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags)


def _layers(view, info: RasterInfo, add_mask: bool, alpha_added: bool) -> Layers:
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


def _write_tile(view, layers: Layers, tile: TileWindow, path: Path, dst_kwargs: dict, options: CogOptions,
                levels: int) -> None:
    """Write the tile compressed, straight from ``view``, then build its overviews in place."""
    colorinterp = [view.colorinterp[b - 1] for b in layers.data]
    if len(layers.data) == 1 and colorinterp[0] is not ColorInterp.palette:
        colorinterp = [ColorInterp.gray]
    profile = {**dst_kwargs, "driver": "GTiff", "width": tile.width, "height": tile.height,
               "count": len(layers.data), "dtype": view.dtypes[0], "crs": view.crs,
               "transform": view.window_transform(tile.window), "nodata": layers.nodata}
    if "photometric" not in profile:  # as GDAL's CreateCopy chooses it
        profile["photometric"] = "RGB" if tuple(colorinterp[:3]) == RGB else "MINISBLACK"
    with rasterio.open(path, "w", **profile) as dst:
        dst.colorinterp = colorinterp
        if colorinterp[0] is ColorInterp.palette:
            dst.write_colormap(1, view.colormap(1))
        chunk = max(options.blocksize, COLUMN_CHUNK // options.blocksize * options.blocksize)
        for row in range(0, tile.height, options.blocksize):
            for col in range(0, tile.width, chunk):
                out = Window(col, row, min(chunk, tile.width - col), min(options.blocksize, tile.height - row))
                window = Window(tile.col_off + col, tile.row_off + row, out.width, out.height)
                data = view.read(indexes=layers.data, window=window)
                alpha = view.read(layers.alpha, window=window) if layers.alpha else None
                if layers.zero_invalid:
                    invalid = alpha == 0 if alpha is not None else view.dataset_mask(window=window) == 0
                    bands = [i for i, b in enumerate(layers.data) if b != layers.alpha]
                    data[bands] = np.where(invalid, 0, data[bands])
                dst.write(data, window=out)
                if layers.mask == "alpha":
                    dst.write_mask(np.where(alpha > 0, 255, 0).astype("uint8"), window=out)
                elif layers.mask == "dataset":
                    dst.write_mask(view.dataset_mask(window=window), window=out)
        if levels:
            dst.build_overviews([2**j for j in range(1, levels + 1)], Resampling[options.overview_resampling])
        for out_index, index in enumerate(layers.data, start=1):
            dst.set_band_description(out_index, view.descriptions[index - 1])
        dst.update_tags(**view.tags(), OVERVIEW_RESAMPLING=options.overview_resampling.upper())
        dst.scales = [view.scales[b - 1] for b in layers.data]
        dst.offsets = [view.offsets[b - 1] for b in layers.data]


def pack_tiff(src_path: str | Path, dst_path: str | Path) -> int:
    """Rewrite a tiled GeoTIFF (overviews added in place) in the COG layout, copying its blocks."""
    tiff = read_tiff(src_path)
    images, masks = [], []
    for level, (image, mask) in enumerate(tiff.levels()):
        images.append(_image(tiff, image, 0, level > 0))
        masks.append(_image(tiff, mask, 0, level > 0) if mask is not None else None)
    return write_cog(dst_path, images, masks, [src_path])


def _image(tiff: TiffFile, index: int, source: int, overview: bool) -> Image:
    """One of ``tiff``'s images, as an image of the file being written (blocks from source ``source``)."""
    ifd = tiff.ifds[index]
    offsets, counts = tiff.blocks[index]
    kind = (ifd.subfile & 4) | (1 if overview else 0)
    return Image(image_tags(ifd, overview), ifd.width, ifd.height, kind,
                 [BlockRef(source, int(o), int(c)) for o, c in zip(offsets, counts, strict=True)])


# -------------------------------------------------------------------------------------- assemble
def assemble_tiles(tile_paths: list[str | Path], dst_path: str | Path,
                   options: CogOptions | None = None, limits: RasterLimits | None = None) -> CogResult:
    """Join tiles from ``process_tile`` (any order) into one COG, as ``create_cog`` would write it.

    TaskError if a tile is missing, unreadable, or does not fit the others (CRS, resolution, bands,
    dtype, nodata, pixel alignment, full coverage without overlap).
    """
    options = options or CogOptions()
    if not tile_paths:
        raise TaskError("no tiles to assemble")
    started = time.perf_counter()
    dst_path = Path(dst_path)
    work_parent = Path(options.tmp_dir) if options.tmp_dir else dst_path.parent
    work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".assemble-", dir=work_parent))
    try:
        paths = [str(Path(p).resolve()) for p in tile_paths]
        facts = [tile_facts(p, limits) for p in paths]
        placed, width, height = place_tiles(facts)
        copy = _copy_plan(facts, placed, width, height, options)
        if copy is None:
            vrt_path = work / "mosaic.vrt"
            vrt_path.write_text(mosaic_xml(facts[0], [(f.path, col, row, f.width, f.height) for f, col, row in placed],
                                           width, height))
            info = validate_raster(vrt_path, limits, app_vrt=True)
            result = translate_to_cog(vrt_path, dst_path, options, info, limits, app_vrt=True)
            result.warnings.append("tiles re-encoded: their blocks could not be copied")
            return result
        tmp_out = work / dst_path.name
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True, GDAL_TIFF_OVR_BLOCKSIZE=str(options.blocksize),
                          GDAL_NUM_THREADS=options.threads):
            _write_assembled(copy, facts, placed, width, height, options, limits, work, tmp_out)
            result = _describe(tmp_out, dst_path, options, limits)
        os.replace(tmp_out, dst_path)
        result.elapsed_s = round(time.perf_counter() - started, 3)
        return result
    except (TiffError, *GDAL_ERRORS) as exc:
        raise TaskError(f"could not assemble {dst_path.name}: {gdal_message(exc)}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


class CopyPlan(NamedTuple):
    """What ``_copy_plan`` found: the parsed tiles, the first tile (top left), levels to copy and in all."""

    tiffs: list[TiffFile]
    first: int
    copied: int
    total: int


def _copy_plan(facts: list[TileFacts], placed: list[tuple[TileFacts, int, int]], width: int, height: int,
               options: CogOptions) -> CopyPlan | None:
    """How the tiles' blocks can be copied (None: they must be re-encoded)."""
    size = options.blocksize
    if (options.target_crs and facts[0].crs_string != options.target_crs) or any(
            f.block != (size, size) or col % size or row % size for f, col, row in placed):
        return None
    tiffs = [read_tiff(f.path) for f in facts]
    levels = [t.levels() for t in tiffs]
    first = next(i for i, (_, col, row) in enumerate(placed) if col == 0 and row == 0)
    codes = COMPRESSION_CODES[options.cog_profile.value]
    main = [t.ifds[lv[0][0]] for t, lv in zip(tiffs, levels, strict=True)]
    if main[first].value(259) not in codes:
        return None
    total = get_maximum_overview_level(width, height, minsize=size)
    exact = tile_levels(width, height, max(max(f.width for f in facts), max(f.height for f in facts)), size,
                        options.overview_resampling)
    copied = -1
    for level in range(min(total, exact, min(len(lv) - 1 for lv in levels)) + 1):
        if level and (facts[first].tags.get("OVERVIEW_RESAMPLING") != options.overview_resampling.upper()
                      or any(col % (size << level) or row % (size << level) for _, col, row in placed)):
            break
        if not all(_same_codec(tiffs, levels, first, n, level) for n in range(len(tiffs))):
            break
        copied = level
    return None if copied < 0 else CopyPlan(tiffs, first, copied, total)


def _same_codec(tiffs: list[TiffFile], levels: list, first: int, n: int, level: int) -> bool:
    mine, theirs = levels[n][level], levels[first][level]
    if (mine[1] is None) != (theirs[1] is None):
        return False
    pairs = [(mine[0], theirs[0])] + ([(mine[1], theirs[1])] if mine[1] is not None else [])
    return all(tiffs[n].ifds[a].codec() == tiffs[first].ifds[b].codec() for a, b in pairs)


def _write_assembled(copy: CopyPlan, facts: list[TileFacts], placed, width: int, height: int,
                     options: CogOptions, limits: RasterLimits | None, work: Path, tmp_out: Path) -> None:
    """Images of the COG: levels 0..copied from the tiles' blocks, the rest from a computed mosaic."""
    sources: list[str | Path] = [f.path for f in facts]
    images, masks = [], []
    for level in range(copy.copied + 1):
        image, mask = _level_from_tiles(copy, placed, width, height, level, options.blocksize)
        images.append(image)
        masks.append(mask)
    if copy.total > copy.copied:
        coarse = _coarse_levels(facts, placed, width, height, copy.copied, copy.total, options, limits, work)
        tiff = read_tiff(coarse)
        sources.append(coarse)
        for image, mask in tiff.levels():
            images.append(_image(tiff, image, len(sources) - 1, True))
            masks.append(_image(tiff, mask, len(sources) - 1, True) if mask is not None else None)
    write_cog(tmp_out, images, masks, sources)


def _level_from_tiles(copy: CopyPlan, placed, width: int, height: int, level: int,
                      size: int) -> tuple[Image, Image | None]:
    """One level of the COG, every block taken from the tile that holds it."""
    level_width, level_height = math.ceil(width / 2**level), math.ceil(height / 2**level)
    across, down = math.ceil(level_width / size), math.ceil(level_height / size)
    template = copy.tiffs[copy.first].levels()[level]
    out = [_image(copy.tiffs[copy.first], i, 0, level > 0) if i is not None else None for i in template]
    for part in out:
        if part is not None:
            part.width, part.height, part.blocks = level_width, level_height, [None] * (across * down)
    for n, (_, col, row) in enumerate(placed):
        for kind, ifd_index in enumerate(copy.tiffs[n].levels()[level]):
            if out[kind] is None:
                continue
            ifd = copy.tiffs[n].ifds[ifd_index]
            offsets, counts = copy.tiffs[n].blocks[ifd_index]
            tiles_across, tiles_down = ifd.blocks_across
            x0, y0 = (col >> level) // size, (row >> level) // size
            for by in range(tiles_down):
                for bx in range(tiles_across):
                    at = (y0 + by) * across + x0 + bx
                    if bx + x0 >= across or by + y0 >= down or out[kind].blocks[at] is not None:
                        raise TaskError(f"tiles do not fit the block grid at level {level}")
                    block = by * tiles_across + bx
                    out[kind].blocks[at] = BlockRef(n, int(offsets[block]), int(counts[block]))
    if any(b is None for part in out if part is not None for b in part.blocks):
        raise TaskError(f"tiles leave a block of level {level} empty")
    return out[0], out[1]


def _coarse_levels(facts: list[TileFacts], placed, width: int, height: int, level: int, total: int,
                   options: CogOptions, limits: RasterLimits | None, work: Path) -> Path:
    """The levels coarser than ``level``: a mosaic of the tiles at ``level``, its overviews built by
    GDAL as ``create_cog`` builds them, written (compressed, COG layout) without the mosaic itself."""
    scale = 2**level
    first = facts[0]
    meta = {"driver": "GTiff", "width": -(-width // scale), "height": -(-height // scale), "count": first.count,
            "dtype": first.dtype, "crs": first.crs, "nodata": first.nodata, "tiled": True,
            "blockxsize": options.blocksize, "blockysize": options.blocksize, "interleave": "pixel",
            "transform": Affine(*first.origin) * Affine.scale(scale), "BIGTIFF": "IF_SAFER"}
    in_memory = meta["width"] * meta["height"] <= options.in_memory_max_pixels
    info = RasterInfo.model_construct(path=first.path, dtypes=[first.dtype] * first.count, count=first.count,
                                      nodata=first.nodata, has_alpha=ColorInterp.alpha in first.colorinterp,
                                      has_mask=first.mask, colorinterp=[c.name for c in first.colorinterp])
    dst_kwargs = creation_options(info, options)[0]
    coarse = work / "coarse.tif"
    with ExitStack() as stack:
        stack.enter_context(gdal_cache_limit(None if in_memory else options.gdal_cachemax_mb))
        if in_memory:
            stage = stack.enter_context(stack.enter_context(MemoryFile()).open(**meta))
        else:
            stage = stack.enter_context(rasterio.open(work / "stage.tif", "w", **meta, compress="ZSTD",
                                                      ZSTD_LEVEL=1))
        stage.colorinterp = first.colorinterp
        for tile, col, row in placed:
            extra = {"overview_level": level - 1} if level else {}
            with open_user_raster(tile.path, limits=limits, **extra) as part:
                for _, window in part.block_windows(1):
                    out = Window(col // scale + window.col_off, row // scale + window.row_off, window.width,
                                 window.height)
                    stage.write(part.read(window=window), window=out)
                    if first.mask:
                        stage.write_mask(part.dataset_mask(window=window), window=out)
        stage.build_overviews([2**j for j in range(1, total - level + 1)], Resampling[options.overview_resampling])
        stage.close()
        with rasterio.open(stage.name, overview_level=0) as levels:
            rio_copy(levels, str(coarse), copy_src_overviews=True, **dst_kwargs)
    return coarse


def _describe(tmp_out: Path, dst_path: Path, options: CogOptions, limits: RasterLimits | None) -> CogResult:
    """Validate the assembled file as a COG (TaskError if it is not) and describe it."""
    out = validate_raster(tmp_out, limits)
    if not out.is_cog:
        raise TaskError(f"the file assembled for {dst_path.name} is not a valid COG: {'; '.join(out.cog_errors)}")
    return CogResult(dst_path=str(dst_path), cog_profile=options.cog_profile, file_size=out.file_size,
                     width=out.width, height=out.height, count=out.count, dtypes=out.dtypes, nodata=out.nodata,
                     validity=out.validity, crs=out.crs, epsg=out.epsg, bounds=out.bounds, res=out.res,
                     blocksize=out.block_shape[1], overview_factors=out.overviews, in_memory=False,
                     gdal_cachemax_mb=options.gdal_cachemax_mb, elapsed_s=0.0)

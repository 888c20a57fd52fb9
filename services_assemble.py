"""One COG from the tiles of ``services_tiles.process_tile``, without decoding or encoding their pixels.

The tiles are in the final COG's compression, predictor and 512 px blocks, and start on the block
grid: the COG's full resolution and each overview level the tiles give exactly (``tile_levels``) are
their compressed blocks, copied into GDAL's COG layout (``services_tiff_write.write_cog``); the coarser levels
are computed from a small mosaic of the finest exact level, by GDAL's own overview code, as
``create_cog`` computes them. A tile's level equals the whole raster's only when GDAL's overview of the
whole raster samples the same pixels: nearest resampling, and every level above of even width and
height (a single tile across or down is the whole width or height). With jpeg and webp the computed
levels come from decoded tiles, so they can differ slightly from a single ``create_cog``.

Tiles that cannot be copied (another profile, block size, CRS than asked, or off the block grid) are
joined the old way: their mosaic VRT converted by ``create_cog``'s translation, every pixel re-encoded,
with a warning in the result. Pure; every tile is opened through ``services_gdal.open_user_raster``
first, and the mosaic VRT only with ``app_vrt=True``.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.io import MemoryFile
from rasterio.rio.overview import get_maximum_overview_level
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window

from errors import TaskError
from services_cog import cog_env, gdal_cache_limit, translate_to_cog
from services_cog_options import CogOptions, CogResult, creation_options
from services_gdal import GDAL_ERRORS, RasterLimits, gdal_message, open_user_raster
from services_mosaic import TileFacts, mosaic_xml, place_tiles, tile_facts
from services_raster import RasterInfo, validate_raster
from services_tiff import TiffError, TiffFile, read_tiff
from services_tiff_write import BlockRef, Image, tiff_image, write_cog

EXACT_TILE_RESAMPLING = frozenset({"nearest"})  # tile overviews equal the whole raster's (when sizes allow)
COMPRESSION_CODES = {"deflate": {8, 32946}, "lzw": {5}, "zstd": {50000}, "webp": {50001}, "jpeg": {7}}
Placed = list[tuple[TileFacts, int, int]]  # (tile, col, row) in the mosaic, from services_mosaic.place_tiles


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


def assemble_tiles(tile_paths: Sequence[str | Path], dst_path: str | Path,
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
        with cog_env(options):
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


def _copy_plan(facts: list[TileFacts], placed: Placed, width: int, height: int,
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


def _same_codec(tiffs: list[TiffFile], levels: list[Any], first: int, n: int, level: int) -> bool:
    mine, theirs = levels[n][level], levels[first][level]
    if (mine[1] is None) != (theirs[1] is None):
        return False
    pairs = [(mine[0], theirs[0])] + ([(mine[1], theirs[1])] if mine[1] is not None else [])
    return all(tiffs[n].ifds[a].codec() == tiffs[first].ifds[b].codec() for a, b in pairs)


def _write_assembled(copy: CopyPlan, facts: list[TileFacts], placed: Placed, width: int, height: int,
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
        for image_ifd, mask_ifd in tiff.levels():
            images.append(tiff_image(tiff, image_ifd, len(sources) - 1, True))
            masks.append(tiff_image(tiff, mask_ifd, len(sources) - 1, True) if mask_ifd is not None else None)
    write_cog(tmp_out, images, masks, sources)


def _level_from_tiles(copy: CopyPlan, placed: Placed, width: int, height: int, level: int,
                      size: int) -> tuple[Image, Image | None]:
    """One level of the COG, every block taken from the tile that holds it."""
    level_width, level_height = math.ceil(width / 2**level), math.ceil(height / 2**level)
    across, down = math.ceil(level_width / size), math.ceil(level_height / size)
    first = copy.tiffs[copy.first]
    out = [tiff_image(first, i, 0, level > 0) for i in first.levels()[level] if i is not None]  # image[, mask]
    grids: list[list[BlockRef | None]] = [[None] * (across * down) for _ in out]  # each part's blocks, row by row
    for n, (_, col, row) in enumerate(placed):
        for kind, ifd_index in enumerate(copy.tiffs[n].levels()[level]):
            if kind >= len(out) or ifd_index is None:
                continue
            ifd = copy.tiffs[n].ifds[ifd_index]
            offsets, counts = copy.tiffs[n].blocks[ifd_index]
            tiles_across, tiles_down = ifd.blocks_across
            x0, y0 = (col >> level) // size, (row >> level) // size
            for by in range(tiles_down):
                for bx in range(tiles_across):
                    at = (y0 + by) * across + x0 + bx
                    if bx + x0 >= across or by + y0 >= down or grids[kind][at] is not None:
                        raise TaskError(f"tiles do not fit the block grid at level {level}")
                    block = by * tiles_across + bx
                    grids[kind][at] = BlockRef(n, int(offsets[block]), int(counts[block]))
    for part, grid in zip(out, grids, strict=True):
        blocks = [b for b in grid if b is not None]
        if len(blocks) != len(grid):
            raise TaskError(f"tiles leave a block of level {level} empty")
        part.width, part.height, part.blocks = level_width, level_height, blocks
    return out[0], out[1] if len(out) > 1 else None


def _coarse_levels(facts: list[TileFacts], placed: Placed, width: int, height: int, level: int, total: int,
                   options: CogOptions, limits: RasterLimits | None, work: Path) -> Path:
    """The levels coarser than ``level``: a mosaic of the tiles at ``level``, its overviews built by
    GDAL as ``create_cog`` builds them, written (compressed, COG layout) without the mosaic itself."""
    scale = 2**level
    first = facts[0]
    meta = {"driver": "GTiff", "width": -(-width // scale), "height": -(-height // scale), "count": first.count,
            "dtype": first.dtype, "crs": first.crs, "nodata": first.nodata, "tiled": True,
            "blockxsize": options.blocksize, "blockysize": options.blocksize, "interleave": "pixel",
            "transform": Affine(*first.origin) @ Affine.scale(scale), "BIGTIFF": "IF_SAFER"}
    in_memory = meta["width"] * meta["height"] <= options.in_memory_max_pixels
    info = RasterInfo.model_construct(  # type: ignore[call-arg]  # partial on purpose: only what is read
        path=first.path, dtypes=[first.dtype] * first.count, count=first.count, nodata=first.nodata,
        has_alpha=ColorInterp.alpha in first.colorinterp, has_mask=first.mask,
        colorinterp=[c.name for c in first.colorinterp])
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
            extra: dict[str, Any] = {"overview_level": level - 1} if level else {}
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

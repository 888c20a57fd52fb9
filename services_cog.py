"""Cloud Optimized GeoTIFFs: ``create_cog`` (one task) writes one (its options, profiles and output name are in
``services_cog_options``).

Pure: reads a local path or a ``RasterSource`` (a blob's URL with a read SAS, read block by block over
the network) with the sidecars the caller allows, writes a local path, returns a ``CogResult``. Inputs
that cannot become the requested COG raise a ``TaskError`` subclass with the reason; a full disk raises
``TransientError``.

Decisions worth knowing:
- jpeg and webp are lossy and 8-bit: non-uint8 data is refused (no silent rescaling). A lossy codec
  would smear a nodata value or an alpha edge, so with jpeg (which cannot store alpha) and with webp
  on nodata data, validity moves to an internal mask band (GDAL_TIFF_INTERNAL_MASK); webp keeps a
  real alpha band (it stores RGBA natively). jpeg needs 1 or 3 data bands, webp 3 (+ alpha).
- ``target_crs`` reprojects through a ``WarpedVRT``; pixels outside the source become nodata (if the
  source has one), transparent (alpha), or masked (otherwise: an internal mask is added).
- Sidecars (``services_source.open_raster``) end up inside the COG: georeferencing and nodata from an
  ``.aux.xml``, a world file or a ``.prj`` (through a ``WarpedVRT`` that overrides the file's own, on the
  same grid when not reprojecting), metadata from an ``.aux.xml`` as tags, and a ``.msk`` as the COG's
  internal mask (written by ``_masked_cog``: the output's mask equals the source's).
- Internal masks survive for every data type: rio-cogeo carries a mask through a WarpedVRT alpha band,
  which GDAL treats as a mask for Byte/UInt16 only, so masked rasters of other types (and reprojected
  ones without nodata) are written by ``_masked_cog`` with the same layout. Pixels under alpha = 0 or
  a mask are written as 0 (GDAL's warper does that); valid pixels are never changed by lossless
  profiles.
- Every core compresses (``NUM_THREADS``, ``threads``); lossless codecs store a predictor (2 for
  integers, 3 for floats), DEFLATE at level 1: with the predictor, GDAL's default level 6 took five
  times the time for 8 % less size (benchmarks/bench_cog.py). Memory stays bounded: above
  ``in_memory_max_pixels`` a temporary file and a ``gdal_cachemax_mb`` block cache (``cog_env``).
- Work happens in a private temporary folder (``tmp_dir``, default: next to ``dst_path`` so the final
  rename is atomic) that is removed on success and on failure; ``dst_path`` appears only once the COG
  has been validated.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.rio.overview import get_maximum_overview_level
from rasterio.shutil import copy as rio_copy
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.errors import RioCogeoError

from errors import CorruptRasterError, TaskError, TransientError
from services_cog_options import ALPHA_MASK_DTYPES, CogOptions, CogResult, creation_options
from services_gdal import RASTER_ERRORS, RasterLimits, check_limits, gdal_message
from services_raster import RasterInfo, validate_raster
from services_source import RasterSource, Sidecars, as_source, mask_reader, open_raster

logger = logging.getLogger(__name__)


# GDAL messages that mean "the input could not be decoded", as opposed to a failure to write.
READ_FAILURE_MARKERS = ("Decoding error", "IReadBlock failed", "TIFFRead", "Read error", "TIFFFillTile",
                        "TIFFFillStrip")
# services_gdal turns VSI_CACHE on for user data (worth it over the network), and it stays on while the
# source is open: at GDAL's default 25 MB per open file, the temporary files' reads alone took 50 MB more.
VSI_CACHE_BYTES = 2**20
# GDAL_NUM_THREADS (overview resampling, warping, decoding) pays for kernels that compute; for nearest it
# only added memory and CPU: compression, the costly part, has its own threads (NUM_THREADS).
CHEAP_RESAMPLING = frozenset({"nearest"})


def create_cog(src_path: str | Path | RasterSource, dst_path: str | Path, options: CogOptions | None = None,
               limits: RasterLimits | None = None, *, sidecars: Sidecars | None = None) -> CogResult:
    """Write ``src_path`` (a local path or a ``RasterSource``) as a validated COG at ``dst_path`` (512 px
    tiles, overviews, nodata/alpha/mask and dtype preserved, the allowed ``sidecars`` applied; see the
    module docstring for the lossy profiles and reprojection). The source (and the reprojected grid) must
    be within ``limits`` (TooLargeError)."""
    info = validate_raster(src_path, limits, sidecars=sidecars)
    return translate_to_cog(src_path, dst_path, options or CogOptions(), info, limits, sidecars=sidecars)


def translate_to_cog(src_path: str | Path | RasterSource, dst_path: str | Path, options: CogOptions,
                     info: RasterInfo, limits: RasterLimits | None = None, *, app_vrt: bool = False,
                     sidecars: Sidecars | None = None) -> CogResult:
    """``create_cog`` for an already validated source (``services_tiles.assemble_tiles`` passes its own
    mosaic VRT, with ``app_vrt=True``)."""
    limits = limits or RasterLimits()
    source = as_source(src_path)
    src_path = source.name  # what messages name: never a SAS
    started = time.perf_counter()
    dst_kwargs, add_mask, notes = creation_options(info, options)
    dst_path = Path(dst_path)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    work_parent = Path(options.tmp_dir) if options.tmp_dir else dst_path.parent
    work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".cog-", dir=work_parent))
    try:
        tmp_out = work / dst_path.name
        with cog_env(options):
            in_memory, cachemax, caught = _translate(source, tmp_out, info, options, dst_kwargs,
                                                     add_mask, limits, app_vrt, sidecars)
            result = _describe_output(tmp_out, dst_path, options, in_memory, cachemax, limits)
        _move_into_place(tmp_out, dst_path)
    except RASTER_ERRORS + (RioCogeoError, OSError) as exc:
        message = gdal_message(exc)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in message:
            raise TransientError(f"disk full while writing the COG for {src_path}: {message}") from exc
        if isinstance(exc, OSError) and not isinstance(exc, RasterioIOError):
            raise
        if any(marker in message for marker in READ_FAILURE_MARKERS):
            raise CorruptRasterError(f"corrupt raster: {src_path}: {message} (a damaged block, found while "
                                     f"converting)") from exc
        raise TaskError(f"COG creation failed for {src_path}: {message}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.warnings = notes + [w for w in caught if w not in notes]
    result.elapsed_s = round(time.perf_counter() - started, 3)
    return result


def cog_env(options: CogOptions) -> rasterio.Env:
    """GDAL's configuration while writing a COG or a tile: internal masks, overview blocks of the COG's
    size, ``options.threads`` threads for overviews, a small VSI cache, and uncompressed files (the
    temporary one, uncompressed sources) read straight from the file: each block is read once, so
    keeping it in the block cache only cost memory (about 30 MB at 8000 x 8000 x 3)."""
    threads = "1" if options.overview_resampling in CHEAP_RESAMPLING else options.threads
    return rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True, GDAL_TIFF_OVR_BLOCKSIZE=str(options.blocksize),
                        GDAL_NUM_THREADS=threads, VSI_CACHE_SIZE=str(VSI_CACHE_BYTES), GTIFF_DIRECT_IO="YES")


def _translate(source: RasterSource, tmp_out: Path, info: RasterInfo, options: CogOptions, dst_kwargs: dict[str, Any],
               add_mask: bool, limits: RasterLimits, app_vrt: bool,
               sidecars: Sidecars | None = None) -> tuple[bool, int | None, list[str]]:
    """Write the COG into ``tmp_out``; returns (in_memory, GDAL_CACHEMAX used, warnings raised)."""
    with ExitStack() as stack:
        raster = stack.enter_context(open_raster(source, limits=limits, sidecars=sidecars, app_vrt=app_vrt))
        src = raster.src
        view = src
        data_indexes = list(src.indexes)
        alpha_added = False
        override = raster.warp_source_kwargs()  # georeferencing/nodata from sidecars
        if options.target_crs:
            vrt_kwargs: dict[str, Any] = {"crs": options.target_crs, "resampling": Resampling[options.resampling],
                                          **override}
            if info.nodata is not None:
                vrt_kwargs.update(src_nodata=info.nodata, nodata=info.nodata)
            elif not info.has_alpha:
                vrt_kwargs["add_alpha"] = alpha_added = True  # outside the source: stored as a mask
                add_mask = True
            view = stack.enter_context(WarpedVRT(src, **vrt_kwargs))
            crs_label = options.target_crs if len(options.target_crs) <= 40 else "the target CRS"
            check_limits(view, limits, f"{source.name} reprojected to {crs_label}")
        elif override:  # the same grid, with the sidecars' georeferencing and nodata
            grid = {"crs": raster.crs, "transform": raster.transform, "width": src.width, "height": src.height}
            if raster.nodata is not None:
                grid["nodata"] = raster.nodata
            view = stack.enter_context(WarpedVRT(src, **override, **grid, resampling=Resampling.nearest))
        pixels = view.width * view.height
        in_memory = pixels <= options.in_memory_max_pixels
        cachemax = None if in_memory else options.gdal_cachemax_mb
        # tags: the file's (rio-cogeo copies those of the dataset it reads) and an .aux.xml's; a reprojected
        # view keeps what it kept before (its own), plus the .aux.xml's
        tags = {**view.tags(), **raster.extra_tags} if options.target_crs else raster.tags()
        masked = (raster.mask is not None or (info.validity == "mask" and bool(override))
                  or (info.dtypes[0] not in ALPHA_MASK_DTYPES and (alpha_added or info.validity == "mask")))
        with gdal_cache_limit(cachemax), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if masked:
                mask_of = mask_reader(raster, view, stack, alpha_added, bool(options.target_crs))
                _masked_cog(view, data_indexes, mask_of, tmp_out, dst_kwargs, options, in_memory, tags)
            else:
                cog_translate(view, str(tmp_out), dst_kwargs, add_mask=add_mask,
                              overview_resampling=options.overview_resampling,
                              resampling=options.resampling, in_memory=in_memory, quiet=True,
                              additional_cog_metadata=tags or None)
    ignored = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    return in_memory, cachemax, [str(w.message) for w in caught if not issubclass(w.category, ignored)]


@contextmanager
def gdal_cache_limit(megabytes: int | None) -> Iterator[None]:
    """Bound GDAL's block cache for the duration, then put the previous size back.

    ``rasterio.Env(GDAL_CACHEMAX=n)`` takes *bytes* (it calls GDALSetCacheMax64, unlike the config
    option where small numbers mean MB), and a nested Env does not restore the size on exit: the
    limit would stay on for the whole process. Hence the explicit restore.
    """
    if megabytes is None:
        yield
        return
    previous = get_gdal_config("GDAL_CACHEMAX")
    try:
        with rasterio.Env(GDAL_CACHEMAX=megabytes * 1024 * 1024):
            yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", previous)


def _masked_cog(source: DatasetReader | WarpedVRT, data_indexes: list[int], mask_of: Callable[[Window], np.ndarray],
                tmp_out: Path, dst_kwargs: dict[str, Any], options: CogOptions, in_memory: bool,
                tags: dict[str, str]) -> None:
    """rio-cogeo's layout (tiled stage + internal mask, overviews, ``copy_src_overviews``) for a mask that
    cog_translate would lose: masked data of types GDAL does not accept as alpha-as-mask (only Byte/UInt16
    do: through cog_translate's WarpedVRT such a mask would be silently dropped), a ``.msk`` sidecar GDAL
    does not know, or a mask under sidecar georeferencing. ``mask_of(window)`` gives the mask (0/255)."""
    size = options.blocksize
    meta = {"driver": "GTiff", "width": source.width, "height": source.height, "count": len(data_indexes),
            "dtype": source.dtypes[0], "crs": source.crs, "transform": source.transform, "tiled": True,
            "blockxsize": size, "blockysize": size, "interleave": "pixel", "BIGTIFF": "IF_SAFER",
            "nodata": source.nodata}
    with ExitStack() as stack:
        if in_memory:
            stage = stack.enter_context(stack.enter_context(MemoryFile()).open(**meta))
        else:
            stage = stack.enter_context(rasterio.open(tmp_out.with_name(".stage.tif"), "w", **meta))
        stage.colorinterp = [source.colorinterp[i - 1] for i in data_indexes]
        for out_index, index in enumerate(data_indexes, start=1):
            stage.set_band_description(out_index, source.descriptions[index - 1])
        stage.scales = [source.scales[i - 1] for i in data_indexes]
        stage.offsets = [source.offsets[i - 1] for i in data_indexes]
        for _, window in stage.block_windows(1):
            stage.write(source.read(indexes=data_indexes, window=window), window=window)
            stage.write_mask(mask_of(window), window=window)
        levels = get_maximum_overview_level(stage.width, stage.height, minsize=size)
        if levels:
            factors = [2**j for j in range(1, levels + 1)]
            stage.build_overviews(factors, Resampling[options.overview_resampling])
        stage.update_tags(**tags, OVERVIEW_RESAMPLING=options.overview_resampling.upper())
        rio_copy(stage, str(tmp_out), copy_src_overviews=True, **dst_kwargs)


def _describe_output(tmp_out: Path, dst_path: Path, options: CogOptions, in_memory: bool,
                     cachemax: int | None, limits: RasterLimits) -> CogResult:
    """Validate the new file as a COG (TaskError if it is not) and describe it."""
    out = validate_raster(tmp_out, limits)
    if not out.is_cog:
        raise TaskError(f"the file written for {dst_path.name} is not a valid COG: {'; '.join(out.cog_errors)}")
    return CogResult(dst_path=str(dst_path), cog_profile=options.cog_profile, file_size=out.file_size,
                     width=out.width, height=out.height, count=out.count, dtypes=out.dtypes,
                     nodata=out.nodata, validity=out.validity, crs=out.crs, epsg=out.epsg, bounds=out.bounds,
                     res=out.res, blocksize=out.block_shape[1], overview_factors=out.overviews,
                     in_memory=in_memory, gdal_cachemax_mb=cachemax, elapsed_s=0.0)


def _move_into_place(tmp_out: Path, dst_path: Path) -> None:
    """Atomic rename when on the same filesystem, copy + rename otherwise."""
    try:
        os.replace(tmp_out, dst_path)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        staging = dst_path.with_name(f".{dst_path.name}.partial")
        try:
            shutil.copyfile(tmp_out, staging)
            os.replace(staging, dst_path)
        finally:
            staging.unlink(missing_ok=True)

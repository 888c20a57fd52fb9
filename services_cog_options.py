"""What a Cloud Optimized GeoTIFF is to be: its profile and options, the deterministic ``cog_output_name``,
the GDAL creation options a profile makes of a raster (codec, predictor, level, mask), and the ``CogResult``
``services_cog`` reports. Pure; no file is read or written here.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from rio_cogeo.profiles import cog_profiles

from errors import UnsupportedDtypeError
from services_crs import user_crs
from services_raster import RasterInfo, crs_string

OverviewResampling = Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode",
                             "gauss", "rms"]
WarpResampling = Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode",
                         "sum", "rms"]


class CogProfile(StrEnum):
    """Compression profiles (rio-cogeo's ``cog_profiles`` names). deflate/lzw/zstd are lossless."""

    DEFLATE = "deflate"
    LZW = "lzw"
    ZSTD = "zstd"
    WEBP = "webp"
    JPEG = "jpeg"


LOSSY_8BIT = frozenset({CogProfile.WEBP, CogProfile.JPEG})
# GDAL reads an alpha band as a mask only for these types (rio-cogeo relies on it for masks).
ALPHA_MASK_DTYPES = frozenset({"uint8", "uint16"})
# Lossless codecs store differences between neighbours (PREDICTOR): 2 (horizontal) for integers, 3
# (floating point) for floats; complex data gets none.
LOSSLESS_PREDICTED = frozenset({"DEFLATE", "LZW", "ZSTD"})
INTEGER_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"})
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
# Compression level per codec (creation option, value). With a predictor, DEFLATE's higher levels cost
# several times the time for a few per cent of size (measured in benchmarks/bench_cog.py).
CODEC_LEVELS = {"DEFLATE": ("ZLEVEL", 1)}


class CogOptions(BaseModel):
    """How to build a COG. Only the fields in ``OUTPUT_FIELDS`` change the output (and its name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cog_profile: CogProfile = CogProfile.DEFLATE
    blocksize: int = Field(512, ge=64, le=4096, multiple_of=16, description="internal tile size, px")
    overview_resampling: OverviewResampling = "nearest"
    target_crs: str | None = Field(None, description="reproject to this CRS: an authority code (EPSG:3857), "
                                                     "WKT or PROJJSON; never a path or URL")
    resampling: WarpResampling = Field("nearest", description="warp resampling, with target_crs")
    quality: int | None = Field(None, ge=1, le=100, description="jpeg/webp quality")
    # Run-time knobs: they bound memory and choose folders, and never change the output.
    in_memory_max_pixels: int = Field(2048 * 2048, ge=0,
                                      description="above this many pixels: temp file + GDAL_CACHEMAX")
    gdal_cachemax_mb: int = Field(64, ge=8, description="GDAL block cache for inputs above the threshold")
    tmp_dir: str | None = Field(None, description="folder for temporary files (default: dst's folder)")
    threads: str = Field("ALL_CPUS", pattern=r"^(ALL_CPUS|[1-9][0-9]{0,2})$",
                         description="compression threads (NUM_THREADS); also overview threads for kernels "
                                     "other than nearest (GDAL_NUM_THREADS)")

    @field_validator("target_crs")
    @classmethod
    def _canonical_crs(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return crs_string(user_crs(value))


OUTPUT_FIELDS = ("cog_profile", "blocksize", "overview_resampling", "target_crs", "resampling", "quality")


class CogResult(BaseModel):
    """The COG that was written (read back from the file)."""

    dst_path: str
    cog_profile: CogProfile
    file_size: int
    width: int
    height: int
    count: int
    dtypes: list[str]
    nodata: float | None
    validity: Literal["nodata", "alpha", "mask", "none"]
    crs: str
    epsg: int | None
    bounds: tuple[float, float, float, float]
    res: tuple[float, float]
    blocksize: int
    overview_factors: list[int]
    in_memory: bool
    gdal_cachemax_mb: int | None
    elapsed_s: float
    warnings: list[str] = Field(default_factory=list)


def cog_output_name(input_blob: str, options: CogOptions | None = None) -> str:
    """Deterministic output blob name: same input + same output options -> same name.

    ``folder/scene.tif`` -> ``folder/scene_cog_deflate_<8 hex>.tif`` (with ``_epsg3857`` before the hash
    when reprojecting). The hash covers every field in ``OUTPUT_FIELDS``, so a retry or resubmission
    overwrites its own earlier output and different options never collide.
    """
    options = options or CogOptions()
    blob = PurePosixPath(input_blob.strip("/"))
    if not blob.name:
        raise ValueError("input_blob is empty")
    wanted = {name: getattr(options, name) for name in OUTPUT_FIELDS}
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True, default=str).encode()).hexdigest()[:8]
    crs_tag = ""
    if options.target_crs:
        crs_tag = "_" + "".join(c for c in options.target_crs.lower() if c.isalnum())[:24]
    stem = blob.name.rsplit(".", 1)[0] if "." in blob.name.lstrip(".") else blob.name
    return str(blob.with_name(f"{stem}_cog_{options.cog_profile.value}{crs_tag}_{digest}.tif"))


def codec_options(compress: str, dtypes: list[str]) -> dict[str, int]:
    """Predictor and level for a codec and the raster's data types (creation options)."""
    compress = compress.upper()
    extra: dict[str, int] = {}
    if compress in LOSSLESS_PREDICTED:
        if set(dtypes) <= INTEGER_DTYPES:
            extra["predictor"] = 2
        elif set(dtypes) <= FLOAT_DTYPES:
            extra["predictor"] = 3
    if compress in CODEC_LEVELS:
        name, level = CODEC_LEVELS[compress]
        extra[name] = level
    return extra


def creation_options(info: RasterInfo, options: CogOptions) -> tuple[dict[str, Any], bool, list[str]]:
    """(GDAL creation options, add an internal mask, notes) of the COG ``options`` make from ``info``;
    TaskError when the profile cannot hold this raster. ``services_cog`` and ``services_tiles`` write with them."""
    profile = options.cog_profile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "non-standard compression" for zstd/webp: chosen on purpose
        # rio-cogeo's COGProfiles.get has no annotations (the package is typed otherwise)
        dst_kwargs: dict[str, Any] = dict(cog_profiles.get(profile.value))  # type: ignore[no-untyped-call]
    dst_kwargs.update(blockxsize=options.blocksize, blockysize=options.blocksize, BIGTIFF="IF_SAFER",
                      NUM_THREADS=options.threads, **codec_options(dst_kwargs["compress"], info.dtypes))
    notes: list[str] = []
    if profile not in LOSSY_8BIT:
        return dst_kwargs, False, notes
    if any(dt != "uint8" for dt in info.dtypes):
        raise UnsupportedDtypeError(f"cog_profile {profile.value!r} stores 8-bit data only and this raster is "
                        f"{'/'.join(sorted(set(info.dtypes)))}: use deflate, lzw or zstd (lossless, any "
                        f"data type), or rescale to uint8 first")
    data_bands = info.count - (1 if info.has_alpha else 0)
    if options.quality is not None:
        dst_kwargs["quality"] = options.quality
    add_mask = False
    if profile is CogProfile.JPEG:
        if data_bands not in (1, 3):
            raise UnsupportedDtypeError(f"cog_profile 'jpeg' needs 1 or 3 data bands (gray or RGB); this raster has "
                            f"{data_bands}: use deflate, lzw or zstd")
        if data_bands != 3:
            dst_kwargs.pop("photometric", None)
        if info.nodata is not None or info.has_alpha:
            add_mask = True
            notes.append(f"jpeg cannot store {'alpha' if info.has_alpha else 'nodata'} exactly: validity "
                         f"is kept as an internal mask band")
    else:
        if data_bands != 3:
            raise UnsupportedDtypeError(f"cog_profile 'webp' needs 3 bands (RGB) or 4 (RGBA); this raster has "
                            f"{info.count}{' including alpha' if info.has_alpha else ''}: use deflate, "
                            f"lzw or zstd")
        if info.nodata is not None:
            add_mask = True
            notes.append("webp is lossy, so nodata is kept as an internal mask band")
    return dst_kwargs, add_mask, notes

"""validate_raster, create_cog, cog_output_name and the tiled path, on real and synthetic rasters."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest_geo import (
    CUSTOM_LAEA_WKT,
    REAL_RASTERS,
    needs_rasters,
    smooth_image,
    write_raster,
)
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.env import get_gdal_config
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from rio_cogeo import cog_validate

from errors import TaskError
from services_cog import create_cog
from services_cog_options import CogOptions, cog_output_name
from services_raster import validate_raster
from services_tiles import assemble_tiles, plan_tiles, process_tile

RGBA = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]


def read_all(path):
    """(pixels, dataset mask, profile-ish facts) of a raster."""
    with rasterio.open(path) as src:
        return src.read(), src.dataset_mask(), {"crs": src.crs, "transform": src.transform,
                                                "bounds": src.bounds, "res": src.res, "nodata": src.nodata,
                                                "dtypes": src.dtypes, "count": src.count,
                                                "colorinterp": src.colorinterp}


def assert_same_raster(a, b, valid_only=False):
    """Same georeferencing, same validity mask, same pixels (only where valid, with ``valid_only``:
    rio-cogeo reads through GDAL's warper, which writes 0 under alpha = 0 and masked pixels)."""
    pa, ma, fa = read_all(a)
    pb, mb, fb = read_all(b)
    for key in ("crs", "transform", "bounds", "res", "dtypes", "count"):
        assert fa[key] == fb[key], key
    assert (fa["nodata"] is None and fb["nodata"] is None) or fa["nodata"] == fb["nodata"]
    np.testing.assert_array_equal(ma, mb)
    if valid_only:
        np.testing.assert_array_equal(pa[:, ma > 0], pb[:, mb > 0])
    else:
        np.testing.assert_array_equal(pa, pb)


# ------------------------------------------------------------------------------------ real rasters
EXPECTED = {  # file: (epsg, dtype, count, validity) from ../shared/testdata/rasters/README.md
    "RGB.byte.tif": (32618, "uint8", 3, "nodata"),
    "RGBA.uint16.tif": (32612, "uint16", 4, "alpha"),
    "byte.tif": (26711, "uint8", 1, "none"),
    "float_raster_with_nodata.tif": (None, "float32", 1, "nodata"),
    "rgb1_fake_nir_epsg3857.tif": (3857, "uint8", 1, "nodata"),
    "shade.tif": (3857, "uint8", 1, "nodata"),
    "world.rgb.tif": (4326, "uint8", 3, "none"),
}


@needs_rasters
@pytest.mark.parametrize("path", REAL_RASTERS, ids=lambda p: p.name)
def test_real_raster_validates_and_becomes_an_identical_cog(path, tmp_path):
    info = validate_raster(path)
    epsg, dtype, count, validity = EXPECTED[path.name]
    assert (info.epsg, info.dtypes[0], info.count, info.validity) == (epsg, dtype, count, validity)
    west, south, east, north = info.bounds_wgs84
    assert -180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90
    if epsg is None:
        assert not info.crs.startswith("EPSG:")
    else:
        assert info.crs == f"EPSG:{epsg}"

    result = create_cog(path, tmp_path / "out.tif")
    assert cog_validate(result.dst_path, quiet=True)[0]
    assert (result.count, result.dtypes[0], result.validity) == (count, dtype, validity)
    assert result.blocksize == 512
    assert_same_raster(path, result.dst_path, valid_only=validity in ("alpha", "mask"))
    assert validate_raster(result.dst_path).is_cog


# ------------------------------------------------------------------------------- synthetic rasters
def test_nodata_uint8_kept_and_pixels_equal(tmp_path):
    data = smooth_image(3, 700, 900)
    data[:, :100, :150] = 0
    src = write_raster(tmp_path / "nodata.tif", data, nodata=0)
    info = validate_raster(src)
    assert info.validity == "nodata" and info.nodata == 0 and not info.is_cog
    result = create_cog(src, tmp_path / "cog.tif")
    assert result.nodata == 0 and result.overview_factors == [2]
    assert_same_raster(src, result.dst_path)


def test_alpha_band_kept_by_lossless_profiles_and_webp(tmp_path):
    data = smooth_image(4, 600, 640)
    data[3] = 255
    data[3, 200:300, 100:400] = 0
    src = write_raster(tmp_path / "rgba.tif", data, colorinterp=RGBA)
    assert validate_raster(src).validity == "alpha"
    deflate = create_cog(src, tmp_path / "deflate.tif")
    assert deflate.validity == "alpha" and deflate.count == 4
    assert_same_raster(src, deflate.dst_path, valid_only=True)
    webp = create_cog(src, tmp_path / "webp.tif", CogOptions(cog_profile="webp"))
    assert webp.validity == "alpha" and webp.count == 4
    np.testing.assert_array_equal(read_all(webp.dst_path)[1], read_all(src)[1])


def test_jpeg_turns_alpha_into_an_internal_mask(tmp_path):
    data = smooth_image(4, 520, 530)
    data[3] = 255
    data[3, :50, :] = 0
    src = write_raster(tmp_path / "rgba.tif", data, colorinterp=RGBA)
    result = create_cog(src, tmp_path / "jpeg.tif", CogOptions(cog_profile="jpeg", quality=90))
    assert (result.count, result.validity) == (3, "mask")
    assert any("internal mask" in w for w in result.warnings)
    np.testing.assert_array_equal(read_all(result.dst_path)[1], np.where(data[3] > 0, 255, 0))
    assert cog_validate(result.dst_path, quiet=True)[0]


def test_internal_mask_is_preserved(tmp_path):
    data = smooth_image(1, 600, 600)
    mask = np.full((600, 600), 255, dtype="uint8")
    mask[100:200, 100:500] = 0
    src = write_raster(tmp_path / "masked.tif", data, mask=mask)
    assert validate_raster(src).validity == "mask"
    result = create_cog(src, tmp_path / "cog.tif")
    assert result.validity == "mask"
    assert_same_raster(src, result.dst_path, valid_only=True)


@pytest.mark.parametrize(("dtype", "nodata", "profile"), [("uint16", None, "deflate"),
                                                          ("uint16", 65535, "zstd"),
                                                          ("float32", -9999.0, "lzw"),
                                                          ("float32", float("nan"), "deflate")])
def test_lossless_profiles_keep_dtype_and_values(tmp_path, dtype, nodata, profile):
    data = smooth_image(2, 530, 610, dtype=dtype)
    if nodata is not None:
        data[:, -30:, -40:] = nodata
    src = write_raster(tmp_path / "in.tif", data, nodata=nodata)
    result = create_cog(src, tmp_path / "out.tif", CogOptions(cog_profile=profile))
    assert result.dtypes == [dtype, dtype]
    with rasterio.open(result.dst_path) as out:
        assert out.compression.value == profile.upper()
        np.testing.assert_array_equal(out.read(), data)  # NaN == NaN for assert_array_equal
        assert (out.nodata is None) == (nodata is None)


@pytest.mark.parametrize("profile", ["jpeg", "webp"])
def test_lossy_8bit_profiles_refuse_uint16_clearly(tmp_path, profile):
    src = write_raster(tmp_path / "u16.tif", smooth_image(3, 64, 64, dtype="uint16"))
    with pytest.raises(TaskError, match=rf"cog_profile '{profile}' stores 8-bit data only .* uint16: use "
                                        r"deflate, lzw or zstd"):
        create_cog(src, tmp_path / "out.tif", CogOptions(cog_profile=profile))
    assert not (tmp_path / "out.tif").exists()


def test_webp_refuses_single_band(tmp_path):
    src = write_raster(tmp_path / "gray.tif", smooth_image(1, 64, 64))
    with pytest.raises(TaskError, match="'webp' needs 3 bands"):
        create_cog(src, tmp_path / "out.tif", CogOptions(cog_profile="webp"))


def test_crs_without_epsg_code_is_kept_as_wkt(tmp_path):
    src = write_raster(tmp_path / "laea.tif", smooth_image(1, 100, 120), crs=CUSTOM_LAEA_WKT,
                       transform=from_origin(990_000, 1_010_000, 100, 100))
    info = validate_raster(src)
    assert info.epsg is None and info.crs.startswith("PROJCRS[")
    assert 11 < info.bounds_wgs84[0] < info.bounds_wgs84[2] < 11.5 and 47 < info.bounds_wgs84[3] < 47.5
    result = create_cog(src, tmp_path / "out.tif")
    assert result.epsg is None
    assert CRS.from_wkt(result.crs) == CRS.from_wkt(CUSTOM_LAEA_WKT)


def test_no_crs_is_a_readable_task_error(tmp_path):
    src = write_raster(tmp_path / "nocrs.tif", smooth_image(1, 32, 32), crs=None)
    with pytest.raises(TaskError, match=r"^no coordinate reference system: .*nocrs\.tif"):
        validate_raster(src)
    with pytest.raises(TaskError, match="no coordinate reference system"):
        create_cog(src, tmp_path / "out.tif")


def test_no_geotransform_is_a_readable_task_error(tmp_path):
    src = write_raster(tmp_path / "nogeo.tif", smooth_image(1, 32, 32), transform=False)
    with pytest.raises(TaskError, match=r"^no geotransform: .*nogeo\.tif"):
        validate_raster(src)


def test_not_a_raster_is_a_readable_task_error(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("this is not a GeoTIFF\n" * 50)
    with pytest.raises(TaskError, match=r"^not a raster: .*notes\.tif"):
        validate_raster(text)
    with pytest.raises(TaskError, match=r"^not a raster: .*missing\.tif: no such file"):
        validate_raster(tmp_path / "missing.tif")


def test_truncated_geotiff_is_corrupt_not_a_crash(tmp_path):
    full = write_raster(tmp_path / "full.tif", smooth_image(3, 600, 700, seed=3), tiled=True,
                        blockxsize=256, blockysize=256, compress="deflate")
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TaskError, match=r"^corrupt raster: .*cut\.tif"):
        validate_raster(cut)
    with pytest.raises(TaskError, match="corrupt raster"):
        create_cog(cut, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


def corrupt_middle_tile(path) -> None:
    """Overwrite a tile in the middle of the file with garbage (first and last blocks stay fine)."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xde\xad\xbe\xef" * 64)


def test_temp_files_are_removed_when_creation_fails(tmp_path):
    src = write_raster(tmp_path / "damaged.tif", smooth_image(3, 768, 768, seed=5), tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate")
    corrupt_middle_tile(src)
    validate_raster(src)  # the cheap check reads the first and last blocks only
    work = tmp_path / "work"
    options = CogOptions(tmp_dir=str(work), in_memory_max_pixels=0)  # on-disk temporary file
    with pytest.raises(TaskError, match=r"^corrupt raster: .*damaged\.tif: .*Decoding error"):
        create_cog(src, tmp_path / "out" / "cog.tif", options)
    assert list(work.iterdir()) == []
    assert not (tmp_path / "out" / "cog.tif").exists()


def test_big_inputs_use_a_temp_file_and_a_bounded_cache(tmp_path):
    src = write_raster(tmp_path / "in.tif", smooth_image(1, 300, 300))
    work = tmp_path / "work"
    with rasterio.Env(GDAL_NUM_THREADS=1):  # a caller's Env: ours is nested, and must not leak
        before = get_gdal_config("GDAL_CACHEMAX")
        big = create_cog(src, tmp_path / "big.tif", CogOptions(in_memory_max_pixels=1000,
                                                               gdal_cachemax_mb=32, tmp_dir=str(work)))
        assert get_gdal_config("GDAL_CACHEMAX") == before
    assert (big.in_memory, big.gdal_cachemax_mb) == (False, 32)
    assert list(work.iterdir()) == []
    small = create_cog(src, tmp_path / "small.tif")
    assert (small.in_memory, small.gdal_cachemax_mb) == (True, None)
    assert_same_raster(big.dst_path, small.dst_path)


def test_reprojection_to_a_target_crs(tmp_path):
    data = smooth_image(1, 400, 500)
    data[0, :20, :] = 0
    src = write_raster(tmp_path / "utm.tif", data, nodata=0)
    result = create_cog(src, tmp_path / "wgs84.tif", CogOptions(target_crs="epsg:4326",
                                                                resampling="bilinear"))
    assert result.crs == "EPSG:4326" and result.nodata == 0
    expected = transform_bounds("EPSG:32618", "EPSG:4326", *validate_raster(src).bounds, densify_pts=21)
    np.testing.assert_allclose(result.bounds, expected, atol=result.res[0] * 2)
    # without nodata, the area outside the source becomes masked
    plain = write_raster(tmp_path / "plain.tif", smooth_image(1, 200, 200),  # far from the central
                         transform=from_origin(200_000, 4_000_000, 30, 30))   # meridian: rotated
    masked = create_cog(plain, tmp_path / "plain4326.tif", CogOptions(target_crs="EPSG:4326"))
    assert masked.validity == "mask" and masked.count == 1
    assert (read_all(masked.dst_path)[1] == 0).any()


def test_output_names_are_deterministic():
    base = cog_output_name("scenes/2024/tile.tif")
    assert base == cog_output_name("scenes/2024/tile.tif", CogOptions())
    assert base.startswith("scenes/2024/tile_cog_deflate_") and base.endswith(".tif")
    # run-time knobs do not change the output, so they do not change its name
    assert base == cog_output_name("scenes/2024/tile.tif", CogOptions(tmp_dir="/x", gdal_cachemax_mb=16,
                                                                      in_memory_max_pixels=1))
    others = {cog_output_name("scenes/2024/tile.tif", o) for o in (
        CogOptions(cog_profile="zstd"), CogOptions(blocksize=256), CogOptions(overview_resampling="average"),
        CogOptions(target_crs="EPSG:3857"), CogOptions(cog_profile="jpeg", quality=80))}
    assert len(others) == 5 and base not in others
    assert (cog_output_name("a.tif", CogOptions(target_crs="epsg:3857"))
            == cog_output_name("a.tif", CogOptions(target_crs="EPSG:3857")))
    assert "_epsg3857_" in cog_output_name("a.tif", CogOptions(target_crs="EPSG:3857"))
    with pytest.raises(ValueError, match="unknown CRS"):
        CogOptions(target_crs="EPSG:999999")


# ------------------------------------------------------------------------------------------ tiling
def test_plan_tiles_covers_the_raster_with_smaller_edge_tiles(tmp_path):
    src = write_raster(tmp_path / "in.tif", smooth_image(1, 1000, 1100))
    tiles = plan_tiles(src, 512)
    assert [(t.col_off, t.row_off, t.width, t.height) for t in tiles] == [
        (0, 0, 512, 512), (512, 0, 512, 512), (1024, 0, 76, 512),
        (0, 512, 512, 488), (512, 512, 512, 488), (1024, 512, 76, 488)]
    assert sum(t.width * t.height for t in tiles) == 1000 * 1100
    with pytest.raises(ValueError):
        plan_tiles(src, 0)


def _nodata_rgb(path):
    data = smooth_image(3, 1000, 900, seed=1)
    data[:, 480:560, :] = 0
    return write_raster(path, data, nodata=0)


def _rgba_uint16(path):
    data = smooth_image(4, 800, 1030, dtype="uint16", seed=2)
    data[3] = 65535
    data[3, 700:, 1000:] = 0
    return write_raster(path, data, colorinterp=RGBA)


def _masked_float(path):
    data = smooth_image(1, 700, 700, dtype="float32", seed=4)
    mask = np.full((700, 700), 255, dtype="uint8")
    mask[500:600, 10:690] = 0
    return write_raster(path, data, mask=mask)


@pytest.mark.parametrize("make", [_nodata_rgb, _rgba_uint16, _masked_float], ids=lambda f: f.__name__[1:])
def test_tiled_path_equals_single_cog(tmp_path, make):
    src = make(tmp_path / "src.tif")
    single = create_cog(src, tmp_path / "single.tif")
    tiles = plan_tiles(src, 512)
    assert len(tiles) >= 4
    parts = [process_tile(src, tile, tmp_path / "tiles" / f"{tile.index}.tif").path for tile in tiles]
    assembled = assemble_tiles(parts[::-1], tmp_path / "assembled.tif")
    assert cog_validate(assembled.dst_path, quiet=True)[0]
    assert (assembled.bounds, assembled.crs, assembled.res) == (single.bounds, single.crs, single.res)
    assert assembled.overview_factors == single.overview_factors
    assert_same_raster(single.dst_path, assembled.dst_path)
    assert_same_raster(src, assembled.dst_path, valid_only=True)
    with rasterio.open(single.dst_path) as a, rasterio.open(assembled.dst_path) as b:
        np.testing.assert_array_equal(a.read(out_shape=(a.count, a.height // 2, a.width // 2)),
                                      b.read(out_shape=(b.count, b.height // 2, b.width // 2)))


def test_tiled_path_with_reprojection_equals_single(tmp_path):
    src = _nodata_rgb(tmp_path / "src.tif")
    options = CogOptions(target_crs="EPSG:4326")
    single = create_cog(src, tmp_path / "single.tif", options)
    parts = [process_tile(src, t, tmp_path / "tiles" / f"{t.index}.tif").path for t in plan_tiles(src, 512)]
    assembled = assemble_tiles(parts, tmp_path / "assembled.tif", options)
    assert_same_raster(single.dst_path, assembled.dst_path)


def test_assemble_refuses_missing_or_foreign_tiles(tmp_path):
    src = _nodata_rgb(tmp_path / "src.tif")
    parts = [process_tile(src, t, tmp_path / "tiles" / f"{t.index}.tif").path for t in plan_tiles(src, 512)]
    with pytest.raises(TaskError, match="a tile is missing or duplicated"):
        assemble_tiles(parts[:-1], tmp_path / "out.tif")
    other = write_raster(tmp_path / "other.tif", smooth_image(3, 10, 10), crs="EPSG:4326", nodata=0,
                         transform=from_origin(0, 0, 0.1, 0.1))
    with pytest.raises(TaskError, match="tiles do not fit together"):
        assemble_tiles([*parts, str(other)], tmp_path / "out.tif")
    with pytest.raises(TaskError, match=r"not a raster: .*gone\.tif"):
        assemble_tiles([*parts, str(tmp_path / "gone.tif")], tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

"""Huge rasters in parallel (issue #12): tiles written once in the final profile, assembled by copying
their compressed blocks (services_tiff), and the ``output: "tiles"`` mosaic; end to end on real Azurite
and pgstac for ``process_large_raster``."""
from __future__ import annotations

import resource
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest_geo import smooth_image, write_raster
from support import download, run_job
from rasterio.enums import ColorInterp
from rio_cogeo import cog_validate

from errors import TaskError
from services_cog import create_cog
from services_cog_options import CogOptions
from services_gdal import open_user_raster
from services_raster import validate_raster
from services_tiff import TiffError, read_tiff
from services_tiff_write import pack_tiff, tiff_image, write_cog
from services_tiles import TileWindow, assemble_tiles, plan_tiles, process_tile, tile_levels

RGBA = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tiled(src: Path, folder: Path, tile_size: int, options: CogOptions | None = None):
    """plan -> every tile -> assemble (tiles in reverse order); (result, tile paths, assemble CPU s)."""
    options = options or CogOptions()
    tiles = plan_tiles(src, tile_size, options=options)
    parts = [process_tile(src, t, folder / "tiles" / f"{t.index}.tif", options).path for t in tiles]
    started = cpu_s()
    result = assemble_tiles(parts[::-1], folder / "assembled.tif", options)
    return result, parts, cpu_s() - started


def assert_same_levels(a, b, exact_overviews: bool = True) -> None:
    """Georeferencing, metadata, pixels and masks of every level equal (overviews only close when not
    ``exact_overviews``)."""
    with rasterio.open(a) as one, rasterio.open(b) as two:
        assert (one.crs, one.transform, one.shape, one.count, one.dtypes, one.nodata, one.colorinterp,
                one.overviews(1), one.tags(), one.descriptions) == (
            two.crs, two.transform, two.shape, two.count, two.dtypes, two.nodata, two.colorinterp,
            two.overviews(1), two.tags(), two.descriptions)
        np.testing.assert_array_equal(one.read(), two.read())
        np.testing.assert_array_equal(one.dataset_mask(), two.dataset_mask())
        levels = len(one.overviews(1))
    for level in range(levels):
        with rasterio.open(a, overview_level=level) as one, rasterio.open(b, overview_level=level) as two:
            np.testing.assert_array_equal(one.dataset_mask(), two.dataset_mask())
            if exact_overviews:
                np.testing.assert_array_equal(one.read(), two.read())
            else:  # computed from decoded (lossy) tiles: as far off as the codec's own error, no more
                assert np.abs(one.read().astype(int) - two.read().astype(int)).mean() < 5


def ifd_tags(path) -> list[dict]:
    """Every IFD's tags but where the blocks are."""
    tiff = read_tiff(path)
    return [{k: v for k, v in ifd.tags.items() if k not in (324, 325)} for ifd in tiff.ifds]


# ------------------------------------------------------------------------------------ services
def test_tile_levels_are_the_levels_a_tile_gives_exactly():
    assert tile_levels(8000, 8000, 4096, 512, "nearest") == 3  # 2, 4, 8: a 4096 tile is one 512 block at 8
    assert tile_levels(8000, 8000, 2048, 512, "nearest") == 2
    assert tile_levels(8001, 8000, 4096, 512, "nearest") == 0  # odd width: GDAL's level 2 samples 2.0002 px
    assert tile_levels(8004, 8000, 4096, 512, "nearest") == 2  # 8004 / 4 is odd: level 3 would drift
    assert tile_levels(3001, 8000, 4096, 512, "nearest") == 3  # one tile across: its width is the raster's
    assert tile_levels(8000, 8000, 4096, 512, "average") == 0  # kernels that cross tile edges: computed whole
    assert tile_levels(8000, 8000, 1536, 512, "nearest") == 0  # 768 px is off the block grid
    assert tile_levels(1024, 1024, 512, 512, "nearest") == 0


def test_assembling_copies_blocks_and_equals_create_cog(tmp_path):
    src = write_raster(tmp_path / "src.tif", smooth_image(3, 2048, 2560, seed=7), tiled=True, blockxsize=512,
                       blockysize=512)
    started = cpu_s()
    single = create_cog(src, tmp_path / "single.tif")
    single_cpu = cpu_s() - started
    assembled, parts, assemble_cpu = tiled(src, tmp_path, 1024)
    assert plan_tiles(src, 1024)[0].levels == 1
    assert assembled.warnings == [] and cog_validate(assembled.dst_path, quiet=True)[0]
    assert validate_raster(assembled.dst_path).is_cog
    assert_same_levels(single.dst_path, assembled.dst_path)
    assert ifd_tags(single.dst_path) == ifd_tags(assembled.dst_path)  # same directories, same compression
    assert assembled.file_size == single.file_size
    # the full-resolution blocks are the tiles' bytes, copied: no pixel was decoded or encoded again
    out, first = read_tiff(assembled.dst_path), read_tiff(parts[0])
    offsets, counts = out.blocks[0]
    tile_offsets, tile_counts = first.blocks[0]
    with open(assembled.dst_path, "rb") as a, open(parts[0], "rb") as b:
        for block in (0, 1):
            a.seek(int(offsets[block]))
            b.seek(int(tile_offsets[block]))
            assert a.read(int(counts[block])) == b.read(int(tile_counts[block]))
    assert assemble_cpu < 0.5 * single_cpu, (assemble_cpu, single_cpu)


@pytest.mark.parametrize("kind", ["nodata", "rgba_uint16", "masked_uint8", "masked_float", "reprojected"])
def test_every_kind_of_validity_assembles_to_the_single_cog(tmp_path, kind):
    options = CogOptions()
    if kind == "nodata":
        data = smooth_image(3, 1000, 1100, seed=1)
        data[:, 480:560, :] = 0
        src = write_raster(tmp_path / "src.tif", data, nodata=0)
    elif kind == "rgba_uint16":
        data = smooth_image(4, 1030, 800, dtype="uint16", seed=2)
        data[3] = 65535
        data[3, 700:, 600:] = 0
        src = write_raster(tmp_path / "src.tif", data, colorinterp=RGBA)
    else:
        dtype = "float32" if kind == "masked_float" else "uint8"
        data = smooth_image(1 if dtype == "float32" else 3, 1100, 1300, dtype=dtype, seed=4)
        mask = np.full((1100, 1300), 255, dtype="uint8")
        mask[500:600, 10:690] = 0
        src = write_raster(tmp_path / "src.tif", data, mask=mask)
        if kind == "reprojected":
            options = CogOptions(target_crs="EPSG:4326")
    single = create_cog(src, tmp_path / "single.tif", options)
    assembled, _, _ = tiled(src, tmp_path, 512, options)
    assert assembled.warnings == [] and cog_validate(assembled.dst_path, quiet=True)[0]
    assert (assembled.validity, assembled.crs, assembled.bounds) == (single.validity, single.crs, single.bounds)
    assert_same_levels(single.dst_path, assembled.dst_path)
    assert ifd_tags(single.dst_path) == ifd_tags(assembled.dst_path)


def test_lossy_tiles_keep_full_resolution_and_close_overviews(tmp_path):
    src = write_raster(tmp_path / "src.tif", smooth_image(3, 2048, 2048, seed=3))
    options = CogOptions(cog_profile="jpeg")
    single = create_cog(src, tmp_path / "single.tif", options)
    assembled, _, _ = tiled(src, tmp_path, 1024, options)
    assert assembled.warnings == [] and cog_validate(assembled.dst_path, quiet=True)[0]
    assert_same_levels(single.dst_path, assembled.dst_path, exact_overviews=False)


def test_each_tile_is_a_cog_in_the_final_profile(tmp_path):
    src = write_raster(tmp_path / "src.tif", smooth_image(1, 1500, 2100, dtype="int16", seed=5))
    for tile in plan_tiles(src, 1024):
        result = process_tile(src, tile, tmp_path / f"{tile.index}.tif")
        assert cog_validate(result.path, quiet=True)[0]
        with rasterio.open(result.path) as out:
            assert out.compression.value == "DEFLATE" and out.block_shapes[0] == (512, 512)
            assert out.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
            assert (out.width, out.height) == (tile.width, tile.height)
            factors = out.overviews(1)
            assert factors and factors == [2 ** j for j in range(1, len(factors) + 1)]


@pytest.mark.parametrize("resampling", ["nearest", "average"])
def test_a_tile_of_the_whole_raster_is_the_single_cog(tmp_path, resampling):
    """Odd sizes: a tile's own overviews (nearest: sampled as rows are read, with GDAL's rule) are GDAL's."""
    data = smooth_image(3, 1299, 1537, seed=12)
    mask = np.full((1299, 1537), 255, dtype="uint8")
    mask[100:400, 700:1501] = 0
    src = write_raster(tmp_path / "src.tif", data, mask=mask)
    options = CogOptions(overview_resampling=resampling)
    whole = TileWindow(index=0, col_off=0, row_off=0, width=1537, height=1299)
    tile = process_tile(src, whole, tmp_path / "tile.tif", options)
    single = create_cog(src, tmp_path / "single.tif", options)
    assert tile.overview_levels == len(single.overview_factors) == 2 and cog_validate(tile.path, quiet=True)[0]
    assert_same_levels(single.dst_path, tile.path)
    assert ifd_tags(single.dst_path) == ifd_tags(tile.path)


def test_foreign_tiles_are_re_encoded_not_copied(tmp_path):
    """Tiles in another profile than asked are still joined right, by the old way (every pixel again)."""
    src = write_raster(tmp_path / "src.tif", smooth_image(3, 1024, 1024, seed=6))
    parts = [process_tile(src, t, tmp_path / f"{t.index}.tif", CogOptions(cog_profile="lzw")).path
             for t in plan_tiles(src, 512)]
    assembled = assemble_tiles(parts, tmp_path / "out.tif", CogOptions())
    assert assembled.warnings == ["tiles re-encoded: their blocks could not be copied"]
    assert_same_levels(create_cog(src, tmp_path / "single.tif").dst_path, assembled.dst_path)


def test_tiff_layer_round_trips_and_refuses_damaged_files(tmp_path):
    src = write_raster(tmp_path / "src.tif", smooth_image(3, 1100, 900, seed=8), tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate")
    with rasterio.open(src, "r+") as ds:
        ds.build_overviews([2, 4])
    packed = tmp_path / "packed.tif"
    pack_tiff(src, packed)
    assert cog_validate(str(packed), quiet=True)[0] and not cog_validate(str(src), quiet=True)[0]
    assert_same_levels(src, packed)
    tiff = read_tiff(packed)
    big = tmp_path / "big.tif"
    levels = tiff.levels()
    write_cog(big, [tiff_image(tiff, i, 0, n > 0) for n, (i, _) in enumerate(levels)], [None] * len(levels),
              [packed], bigtiff=True)
    assert big.read_bytes()[2:4] == struct.pack("<H", 43)
    assert_same_levels(packed, big)
    data = packed.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TiffError, match="past the end"):
        read_tiff(cut)
    (tmp_path / "be.tif").write_bytes(b"MM\0*" + data[4:])
    with pytest.raises(TiffError, match="little-endian"):
        read_tiff(tmp_path / "be.tif")
    (tmp_path / "loop.tif").write_bytes(data[:4] + struct.pack("<I", 4) + data[8:])
    with pytest.raises(TiffError):
        read_tiff(tmp_path / "loop.tif")


def test_a_damaged_tile_fails_the_assembly_with_a_message(tmp_path):
    src = write_raster(tmp_path / "src.tif", smooth_image(3, 1024, 1024, seed=9))
    parts = [process_tile(src, t, tmp_path / f"{t.index}.tif").path for t in plan_tiles(src, 512)]
    data = Path(parts[1]).read_bytes()
    Path(parts[1]).write_bytes(data[: len(data) - 5000])
    with pytest.raises(TaskError, match=r"1\.tif"):
        assemble_tiles(parts, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


# ---------------------------------------------------------------------------------- end to end


@pytest.fixture
def big_source(geo_engine, tmp_path):
    data = smooth_image(3, 1024, 1024, seed=11)
    data[:, :40, :] = 0
    src = write_raster(tmp_path / "big.tif", data, nodata=0, tiled=True, blockxsize=256, blockysize=256)
    geo_engine.repos.rasters.upload(geo_engine.settings.input_container, "large/big.tif", src, "image/tiff")
    return src


def test_process_large_raster_writes_the_single_cog(geo_engine, tmp_path, big_source):
    status = run_job(geo_engine, "process_large_raster", {"blob": "large/big.tif", "tile_size": 512})
    assert status["status"] == "completed", status.get("error_details")
    result = status["result_data"]
    assert (result["tiles"], result["output"]) == (4, "cog")
    cog = result["cog"]
    assert cog["warnings"] == [] and cog["resources"]["peak_scratch_mib"] > 0
    local = download(geo_engine, cog["output_container"], cog["output_blob"], tmp_path / "out" / "cog.tif")
    assert cog_validate(str(local), quiet=True)[0] and validate_raster(local).is_cog
    single = create_cog(big_source, tmp_path / "single.tif")
    assert_same_levels(single.dst_path, local)
    stored = geo_engine.io.pgstac().get_item(result["item"]["collection_id"], result["item"]["item_id"])
    assert stored["assets"]["data"]["href"] == cog["url"]
    # the intermediate tiles are deleted once the COG is catalogued
    assert len(cog["tile_blobs"]) == 4 and result["item"]["intermediates_deleted"] == 4
    assert [b.name for b in geo_engine.repos.rasters.list(geo_engine.settings.payload_container, "tiles/")] == []


def test_process_large_raster_tiles_output_gives_items_and_a_mosaic(geo_engine, tmp_path, big_source):
    collection = f"tiles-{uuid.uuid4().hex[:6]}"
    status = run_job(geo_engine, "process_large_raster", {"blob": "large/big.tif", "tile_size": 512,
                                                          "output": "tiles", "collection_id": collection})
    assert status["status"] == "completed", status.get("error_details")
    result = status["result_data"]
    mosaic, items = result["mosaic"], result["items"]
    assert result["tiles"] == 4 and len(items) == 4 and len(result["outputs"]) == 5
    catalogue = geo_engine.io.pgstac()
    assert catalogue.count_items(collection) == 4
    folder = tmp_path / "download"
    vrt = download(geo_engine, mosaic["output_container"], mosaic["output_blob"],
                   folder / Path(mosaic["output_blob"]).name)
    for item in items:
        stored = catalogue.get_item(collection, item["item_id"])
        assert stored["assets"]["mosaic"]["href"] == mosaic["url"]
        assert stored["assets"]["mosaic"]["type"] == "application/x-gdal-vrt"
        tile = download(geo_engine, item["container"], item["blob"], folder / Path(item["blob"]).name)
        assert cog_validate(str(tile), quiet=True)[0]
        assert stored["assets"]["data"]["href"].endswith(item["blob"])
    assert 'relativeToVRT="1"' in vrt.read_text() and str(folder) not in vrt.read_text()
    with open_user_raster(vrt, app_vrt=True) as joined, rasterio.open(big_source) as source:
        assert (joined.crs, joined.transform, joined.shape, joined.nodata) == (source.crs, source.transform,
                                                                               source.shape, source.nodata)
        np.testing.assert_array_equal(joined.read(), source.read())

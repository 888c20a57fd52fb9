"""The geospatial pipeline end to end, in-process, on real Azurite and real PostGIS + pgstac."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

import api_jobs
from support import download, run_job
from support import upload as any_upload
from conftest_geo import (
    CUSTOM_LAEA_WKT, REAL_RASTERS, SCHEMAS_DIR, needs_rasters, needs_schemas, smooth_image, write_raster,
)
from models import Status
from services_stac import validate_item_offline


upload = partial(any_upload, sniff=True)  # image/tiff or text/plain by the file's first bytes


def check_processed(engine, status: dict, tmp: Path) -> dict:
    """The COG is valid and readable; the item is in pgstac, found by its bbox, and valid offline."""
    assert status["status"] == "completed", status.get("error_details")
    (raster,) = status["result_data"]["rasters"]
    cog = raster["cog"]
    local = download(engine, cog["output_container"], cog["output_blob"], tmp)
    assert cog_validate(str(local))[0]
    with rasterio.open(local) as src:
        assert src.block_shapes[0] == (512, 512) or max(src.width, src.height) < 512
    item = raster["item"]
    catalogue = engine.io.pgstac()
    found = catalogue.search(bbox=item["bbox"], collections=[item["collection_id"]])
    assert item["item_id"] in {f["id"] for f in found}
    stored = catalogue.get_item(item["collection_id"], item["item_id"])
    assert stored["assets"]["data"]["href"] == cog["url"]
    assert cog["href"].startswith(cog["url"] + "?") and "sp=r" in cog["href"] and "sas_url" not in cog  # issue #15
    return stored


@needs_rasters
@needs_schemas
@pytest.mark.parametrize("path", REAL_RASTERS, ids=lambda p: p.name)
def test_every_shared_raster_becomes_a_valid_cog_and_a_valid_item(geo_engine, tmp_path, path):
    blob = upload(geo_engine, path, f"shared/{path.name}")
    status = run_job(geo_engine, "process_raster", {"blob": blob, "datetime": "2020-01-02T03:04:05Z"})
    stored = check_processed(geo_engine, status, tmp_path)
    assert stored["properties"]["datetime"].startswith("2020-01-02T03:04:05")
    validate_item_offline(stored, SCHEMAS_DIR, skip_unavailable=True)  # no local schema for processing (#12)


def synthetic(tmp: Path, kind: str) -> Path:
    path = tmp / f"{kind}.tif"
    if kind == "nodata":
        data = smooth_image(1, 300, 400)
        data[0, :50, :] = 0
        return write_raster(path, data, nodata=0)
    if kind == "alpha":
        data = smooth_image(4, 256, 256)
        data[3] = 255
        data[3, :64] = 0
        from rasterio.enums import ColorInterp as C
        return write_raster(path, data, colorinterp=[C.red, C.green, C.blue, C.alpha])
    if kind == "uint16":
        return write_raster(path, smooth_image(3, 200, 300, "uint16"))
    if kind == "float32":
        return write_raster(path, smooth_image(1, 200, 300, "float32"), nodata=-9999.0)
    if kind == "custom_crs":
        return write_raster(path, smooth_image(1, 100, 120), crs=CUSTOM_LAEA_WKT,
                            transform=rasterio.transform.from_origin(990_000, 1_010_000, 100, 100))
    if kind == "no_crs":
        return write_raster(path, smooth_image(1, 100, 100), crs=None)
    if kind == "not_a_raster":
        path.write_text("just some text, not an image\n" * 10)
        return path
    if kind == "truncated":
        full = write_raster(tmp / "full.tif", smooth_image(3, 600, 600), tiled=True, blockxsize=256,
                            blockysize=256, compress="deflate")
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    raise ValueError(kind)


@pytest.mark.parametrize("kind,expect", [
    ("nodata", {"nodata": 0.0, "dtypes": ["uint8"]}),
    ("alpha", {"count": 4, "dtypes": ["uint8"] * 4}),
    ("uint16", {"dtypes": ["uint16"] * 3}),
    ("float32", {"dtypes": ["float32"], "nodata": -9999.0}),
    ("custom_crs", {"epsg": None}),
    ("no_crs", "no coordinate reference system"),
    ("not_a_raster", "not a raster"),
    ("truncated", "corrupt raster"),
])
def test_synthetic_rasters_end_as_stated(geo_engine, tmp_path, kind, expect):
    blob = upload(geo_engine, synthetic(tmp_path, kind), f"synthetic/{kind}.tif")
    status = run_job(geo_engine, "process_raster", {"blob": blob})
    if isinstance(expect, str):
        assert status["status"] == "failed"
        assert f"{expect}: {geo_engine.settings.input_container}/{blob}" in status["error_details"]
        assert status["stages"][0]["tasks"]["failed"] == 1 and status["stages"][0]["attempts"] == 1
        return
    stored = check_processed(geo_engine, status, tmp_path)
    validated = status["result_data"]["rasters"][0]["input"]
    for key, value in expect.items():
        assert validated[key] == value, (key, validated[key])
    cog = status["result_data"]["rasters"][0]["cog"]
    assert cog["dtypes"] == validated["dtypes"] and cog["nodata"] == validated["nodata"]
    if kind == "custom_crs":
        assert "proj:wkt2" in stored["properties"] and stored["properties"].get("proj:code") is None
    if kind == "alpha":
        assert cog["validity"] == "alpha"


def test_missing_blob_is_a_readable_failure(geo_engine):
    status = run_job(geo_engine, "process_raster", {"blob": "nowhere/missing.tif"})
    assert status["status"] == "failed" and "blob not found" in status["error_details"]


def test_batch_by_prefix_and_idempotent_rerun(geo_engine, tmp_path, azurite):
    for i in range(5):
        upload(geo_engine, write_raster(tmp_path / f"b{i}.tif", smooth_image(1, 128, 128, seed=i),
                                        transform=rasterio.transform.from_origin(500_000 + i * 5000, 4e6, 30, 30)),
               f"batch/scene{i}.tif")
    upload(geo_engine, synthetic(tmp_path, "not_a_raster"), "batch/readme.txt")  # not listed: not a raster name
    status = run_job(geo_engine, "process_raster_batch", {"prefix": "batch/"})
    assert status["status"] == "completed", status.get("error_details")
    assert [s["tasks"]["total"] for s in status["stages"]] == [5, 5, 5, 1]  # validate, cog, build, one load
    outputs = status["result_data"]["outputs"]
    assert len(outputs) == 5 and len({o["blob"] for o in outputs}) == 5
    collection = status["result_data"]["rasters"][0]["item"]["collection_id"]
    assert geo_engine.io.pgstac().count_items(collection) == 5
    # the same job again, on a fresh job store (same blobs, same catalogue): one COG and one item each
    from support import fresh_settings
    from repositories import Repositories
    from task_manager import Engine

    again = Engine(Repositories(fresh_settings(azurite.connection_string, **geo_engine.settings.model_dump(
        include={"pgstac_host", "pgstac_port", "pgstac_dbname", "pgstac_user", "pgstac_password",
                 "input_container", "output_container", "default_collection", "work_dir"}))).ensure())
    status2 = run_job(again, "process_raster_batch", {"prefix": "batch/"})
    assert status2["job_id"] == status["job_id"]
    assert [r["item"]["action"] for r in status2["result_data"]["rasters"]] == ["updated"] * 5
    assert geo_engine.io.pgstac().count_items(collection) == 5
    cogs = [b.name for b in geo_engine.repos.rasters.list(geo_engine.settings.output_container)]
    assert sorted(cogs) == sorted(o["blob"] for o in outputs)


def test_sync_container_catalogues_every_geotiff(geo_engine, tmp_path):
    container = geo_engine.settings.input_container
    for i in range(21):
        upload(geo_engine, write_raster(tmp_path / f"s{i}.tif", smooth_image(1, 64, 64, seed=i),
                                        transform=rasterio.transform.from_origin(400_000, 4e6 - i * 3000, 30, 30)),
               f"sync/tile{i:02d}.tif")
    upload(geo_engine, write_raster(tmp_path / "noext.tif", smooth_image(1, 64, 64)), "sync/no_extension")
    upload(geo_engine, synthetic(tmp_path, "not_a_raster"), "sync/notes.txt")
    upload(geo_engine, synthetic(tmp_path, "truncated"), "sync/broken.tif")
    status = run_job(geo_engine, "sync_container", {"container": container, "prefix": "sync/"})
    assert status["status"] == "completed", status.get("error_details")
    result = status["result_data"]
    assert (result["listed"], result["created"], result["updated"], result["failed"]) == (23, 22, 0, 1)
    assert len(result["failed_tasks"]) == 1
    assert result["failed_tasks"][0]["error"].startswith(f"corrupt raster: {container}/sync/broken.tif: ")
    assert geo_engine.io.pgstac().count_items(result["collection_id"]) == 22


def test_list_container_inventory(geo_engine, tmp_path):
    for name in ("a/x.tif", "a/y.TIF", "a/z.txt", "b/w.tif"):
        upload(geo_engine, synthetic(tmp_path, "not_a_raster"), name)
    status = run_job(geo_engine, "list_container", {"prefix": "a/"})
    result = status["result_data"]
    assert result["count"] == 3 and result["by_extension"] == {".tif": 2, ".txt": 1}
    assert result["total_bytes"] == 3 * (tmp_path / "not_a_raster.tif").stat().st_size
    filtered = run_job(geo_engine, "list_container", {"prefix": "a/", "suffixes": [".TIF"]})["result_data"]
    assert [b["name"] for b in filtered["blobs"]] == ["a/x.tif", "a/y.TIF"]


def test_large_raster_in_tiles_matches_the_single_task_cog(geo_engine, tmp_path):
    src = write_raster(tmp_path / "big.tif", smooth_image(3, 1100, 1500), nodata=None, tiled=True,
                       blockxsize=512, blockysize=512)
    upload(geo_engine, src, "large/big.tif")
    tiled = run_job(geo_engine, "process_large_raster", {"blob": "large/big.tif", "tile_size": 512})
    assert tiled["status"] == "completed", tiled.get("error_details")
    assert tiled["result_data"]["tiles"] == 9 and tiled["stages"][1]["tasks"]["total"] == 9
    single = run_job(geo_engine, "process_raster", {"blob": "large/big.tif", "collection_id": "single-check"})
    a = download(geo_engine, geo_engine.settings.output_container, tiled["result_data"]["cog"]["output_blob"], tmp_path)
    b = download(geo_engine, geo_engine.settings.output_container,
                 single["result_data"]["rasters"][0]["cog"]["output_blob"], tmp_path)
    assert cog_validate(str(a))[0]
    with rasterio.open(a) as ta, rasterio.open(b) as sb:
        assert (ta.crs, ta.transform, ta.width, ta.height, ta.bounds) == (sb.crs, sb.transform, sb.width, sb.height,
                                                                          sb.bounds)
        assert np.array_equal(ta.read(), sb.read())


def test_bad_parameters_are_400_with_the_field_named(geo_engine):
    from errors import ParameterValidationError
    cases = [("process_raster", {"blob": "../etc/passwd"}, "blob"), ("process_raster", {"blob": "/abs.tif"}, "blob"),
             ("process_raster", {"blob": "a.tif", "container": "Bad_Name"}, "container"),
             ("process_raster", {"blob": "a.tif", "target_crs": "EPSG:999999"}, "target_crs"),
             ("process_raster_batch", {"blobs": ["a.tif"], "prefix": "x"}, "(body)"),
             ("process_large_raster", {"blob": "a.tif", "tile_size": 1000}, "tile_size")]
    for job_type, params, field in cases:
        with pytest.raises(ParameterValidationError) as err:
            api_jobs.submit(geo_engine, job_type, json.dumps(params).encode(), "http://t")
        fields = {e["field"] for e in err.value.details["errors"]}
        assert field in fields or (field == "(body)" and fields), (job_type, params, fields)
    assert Status.FAILED  # the status enum is shared by every job type

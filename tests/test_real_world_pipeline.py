"""Real-world rasters (issue #12) end to end, through the queues, on real Azurite and PostGIS + pgstac:
sidecars travel with their raster, inputs are read over the network (not downloaded), failures carry a code,
items carry their provenance."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import rasterio
from support import download, fresh_settings, run_job, upload
from conftest_geo import (
    AUX_GEOREF, GEOS, SCHEMAS_DIR, bare_scene, check_geojson, geos_disk, masked_scene, needs_schemas, polar_grid,
    remote_vrt, smooth_image, write_raster,
)
from rasterio.crs import CRS
from rasterio.transform import from_bounds

import api_listing
import api_openapi
import api_system
from errors import ErrorCode, TaskError
from models import Status, TaskRecord
from repositories import Repositories
from services_stac import PROCESSING_EXTENSION, validate_item_offline
from task_manager import Engine, gave_up_code

MIB = 1024 * 1024


def tasks_of(engine, job_id: str) -> list[dict]:
    code, body = api_listing.list_tasks(engine, job_id)
    assert code == 200
    return body["tasks"]


# ------------------------------------------------------------------------------------ sidecars, provenance
@needs_schemas
def test_a_jpeg_raster_with_a_msk_keeps_its_mask_and_its_item_says_where_it_came_from(geo_engine, tmp_path):
    src, mask = masked_scene(tmp_path, jpeg=True)
    geo_engine.settings.whole_read_bytes = 0  # read by ranges over the network, as a large scene is
    container = geo_engine.settings.input_container
    upload(geo_engine, src, "masked/scene.tif")
    upload(geo_engine, tmp_path / "scene.tif.msk", "masked/scene.tif.msk")
    status = run_job(geo_engine, "process_raster", {"blob": "masked/scene.tif", "cog_profile": "jpeg",
                                                    "datetime": "2020-01-02T03:04:05Z"})
    assert status["status"] == "completed", status.get("error_details")
    (raster,) = status["result_data"]["rasters"]
    validated, cog, item = raster["input"], raster["cog"], raster["item"]
    assert validated["validity"] == "mask" and validated["sidecars"] == [f"{container}/masked/scene.tif.msk"]
    assert validated["input"]["read"].startswith("remote") and cog["input"]["read"].startswith("remote")
    with rasterio.open(download(geo_engine, cog["output_container"], cog["output_blob"], tmp_path)) as out:
        assert np.array_equal(out.dataset_mask(), mask)  # was: no mask at all, a third of the image black
    # provenance
    catalogue = geo_engine.io.pgstac()
    stored = catalogue.get_item(item["collection_id"], item["item_id"])
    props = stored["properties"]
    assert set(props["processing:software"]) >= {"geoetl", "gdal", "rasterio", "rio-cogeo"}
    assert props["processing:software"]["gdal"] == rasterio.__gdal_version__
    assert status["job_id"] in props["processing:lineage"] and "process_raster" in props["processing:lineage"]
    assert f"{container}/masked/scene.tif" in props["processing:lineage"]
    assert props["created"] and props["updated"] and PROCESSING_EXTENSION in stored["stac_extensions"]
    (derived,) = [link for link in stored["links"] if link["rel"] == "derived_from"]
    assert derived["href"] == geo_engine.repos.rasters.url(container, "masked/scene.tif")
    assert stored["assets"]["data"]["file:checksum"] == "1220" + cog["sha256"]
    collection = catalogue.get_collection(item["collection_id"])
    assert collection["summaries"]["proj:code"] == ["EPSG:32633"]
    # offline validation: there is no local schema for the processing extension; everything else is checked
    checked = validate_item_offline(stored, SCHEMAS_DIR, skip_unavailable=True)
    assert PROCESSING_EXTENSION not in checked and len(checked) >= 4
    with pytest.raises(TaskError, match="no local schema for .*processing"):
        validate_item_offline(stored, SCHEMAS_DIR)


def test_sidecar_georeferencing_end_to_end_and_a_batch_takes_no_sidecar_as_input(geo_engine, tmp_path):
    upload(geo_engine, bare_scene(tmp_path, "aux.tif"), "bare/aux.tif")
    (tmp_path / "aux.tif.aux.xml").write_text(AUX_GEOREF)
    upload(geo_engine, tmp_path / "aux.tif.aux.xml", "bare/aux.tif.aux.xml")
    upload(geo_engine, bare_scene(tmp_path, "world.tif"), "bare/world.tif")
    (tmp_path / "world.tfw").write_text("30\n0\n0\n-30\n300015\n4200015\n")
    (tmp_path / "world.prj").write_text(CRS.from_epsg(32631).to_wkt(version="WKT1_ESRI"))
    upload(geo_engine, tmp_path / "world.tfw", "bare/world.tfw")
    upload(geo_engine, tmp_path / "world.prj", "bare/world.prj")
    status = run_job(geo_engine, "process_raster_batch", {"prefix": "bare/"})
    assert status["status"] == "completed", status.get("error_details")
    assert [s["tasks"]["total"] for s in status["stages"]] == [2, 2, 2, 1]  # two rasters, no sidecar as input
    cogs = {r["input"]["blob"]: r["cog"] for r in status["result_data"]["rasters"]}
    with rasterio.open(download(geo_engine, cogs["bare/aux.tif"]["output_container"],
                                  cogs["bare/aux.tif"]["output_blob"], tmp_path)) as out:
        assert out.crs.to_epsg() == 32633 and out.transform.c == 400_000 and out.nodata == 0
        assert out.tags()["TIFFTAG_DATETIME"] == "2019:07:01 10:20:30"
    with rasterio.open(download(geo_engine, cogs["bare/world.tif"]["output_container"],
                                  cogs["bare/world.tif"]["output_blob"], tmp_path)) as out:
        assert out.crs.to_epsg() == 32631 and (out.transform.c, out.transform.f) == (300_000, 4_200_030)
    explicit = run_job(geo_engine, "process_raster_batch", {"blobs": ["bare/aux.tif.aux.xml", "bare/world.tfw"]})
    assert explicit["status"] == "failed" and "names only sidecar files" in explicit["error_details"]


@needs_schemas
def test_a_geostationary_disk_and_a_polar_grid_are_catalogued(geo_engine, tmp_path):
    upload(geo_engine, geos_disk(tmp_path, lon_0=140.7), "earth/himawari.tif")
    upload(geo_engine, polar_grid(tmp_path), "earth/arctic.tif")
    status = run_job(geo_engine, "process_raster_batch", {"prefix": "earth/", "datetime": "2021-06-01T00:00:00Z"})
    assert status["status"] == "completed", status.get("error_details")
    catalogue = geo_engine.io.pgstac()
    for raster in status["result_data"]["rasters"]:
        stored = catalogue.get_item(raster["item"]["collection_id"], raster["item"]["item_id"])
        check_geojson(stored["geometry"], stored["bbox"])
        validate_item_offline(stored, SCHEMAS_DIR, skip_unavailable=True)
        found = catalogue.search(bbox=[170, 10, 175, 20] if "himawari" in raster["input"]["blob"] else [0, 89, 1, 90],
                                 collections=[raster["item"]["collection_id"]])
        assert raster["item"]["item_id"] in {f["id"] for f in found}


def test_sync_and_list_treat_sidecars_as_companions(geo_engine, tmp_path):
    src, _ = masked_scene(tmp_path, size=256)
    upload(geo_engine, src, "sync/scene.tif")
    upload(geo_engine, tmp_path / "scene.tif.msk", "sync/scene.tif.msk")  # a TIFF: by content alone, an item
    (tmp_path / "x.aux.xml").write_text("<PAMDataset><Metadata><MDI key='A'>b</MDI></Metadata></PAMDataset>")
    upload(geo_engine, tmp_path / "x.aux.xml", "sync/scene.tif.aux.xml")
    upload(geo_engine, write_raster(tmp_path / "other.tif", smooth_image(1, 64, 64)), "sync/other.tif")
    status = run_job(geo_engine, "sync_container", {"prefix": "sync/"})
    assert status["status"] == "completed", status.get("error_details")
    result = status["result_data"]
    assert result["listed"] == 2 and sorted(result["items"]) == sorted(
        [f"{geo_engine.settings.input_container}--sync__scene", f"{geo_engine.settings.input_container}--sync__other"])
    stored = geo_engine.io.pgstac().get_item(result["collection_id"], result["items"][0])
    scene = stored if "scene" in stored["id"] else geo_engine.io.pgstac().get_item(result["collection_id"],
                                                                                   result["items"][1])
    assert scene["assets"]["mask"]["href"].endswith("sync/scene.tif.msk")
    assert scene["assets"]["mask"]["roles"] == ["data-mask"]
    assert "processing:lineage" in scene["properties"] and "sync_container" in scene["properties"]["processing:lineage"]
    # the listing hands its size to the build task of the blob with no sidecar (one GET, no listing of its own),
    # never to the one with sidecars; both items still describe their files
    built = {t["parameters"]["blob"]: t["parameters"] for t in tasks_of(geo_engine, status["job_id"])
             if t["stage"] == 2}
    (other,) = geo_engine.io.rasters.list(geo_engine.settings.input_container, "sync/other")
    assert built["sync/other.tif"]["listed_size"] == other.size and "listed_size" not in built["sync/scene.tif"]
    other_item = geo_engine.io.pgstac().get_item(result["collection_id"],
                                                 f"{geo_engine.settings.input_container}--sync__other")
    assert other_item["assets"]["data"]["file:size"] == other.size and set(other_item["assets"]) == {"data"}
    assert other_item["assets"]["data"]["file:checksum"].startswith("1220")
    listing = run_job(geo_engine, "list_container", {"prefix": "sync/"})["result_data"]
    assert listing["count"] == 4 and listing["sidecar_count"] == 2
    entries = {b["name"]: b for b in listing["blobs"]}
    assert sorted(entries) == ["sync/other.tif", "sync/scene.tif"]
    assert entries["sync/scene.tif"]["sidecars"] == ["sync/scene.tif.aux.xml", "sync/scene.tif.msk"]


def test_a_hostile_msk_fails_the_raster_without_a_request(geo_engine, tmp_path, loopback):
    listener = loopback
    upload(geo_engine, write_raster(tmp_path / "h.tif", smooth_image(1, 64, 64)), "hostile/h.tif")
    (tmp_path / "h.msk").write_text(remote_vrt(f"{listener.url}/m.tif"))
    upload(geo_engine, tmp_path / "h.msk", "hostile/h.tif.msk")
    status = run_job(geo_engine, "process_raster", {"blob": "hostile/h.tif"})
    assert status["status"] == "failed"
    assert (f"not a raster: {geo_engine.settings.input_container}/hostile/h.tif.msk: only GeoTIFF/COG files are "
            f"accepted and this is VRT XML") in status["error_details"]
    (failed,) = [t for t in tasks_of(geo_engine, status["job_id"]) if t["status"] == "failed"]
    assert failed["error_code"] == "not_a_raster"
    assert listener.hits == []


def test_gdal_alone_misses_a_sidecar_beside_a_sas_url_and_open_blob_finds_it(geo_engine, tmp_path):
    """Why sidecars are listed and opened by the app: GDAL looks for no sibling of a URL with a query."""
    from controller_sources import open_blob
    from services_source import open_raster

    src, mask = masked_scene(tmp_path, size=256)
    geo_engine.settings.whole_read_bytes = 0  # read by ranges over the network, as a large scene is
    upload(geo_engine, src, "why/scene.tif")
    upload(geo_engine, tmp_path / "scene.tif.msk", "why/scene.tif.msk")
    sas = geo_engine.repos.rasters.read_sas_url(geo_engine.settings.input_container, "why/scene.tif")
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="FALSE"), rasterio.open(f"/vsicurl/{sas}") as plain:
        assert plain.mask_flag_enums[0] == [rasterio.enums.MaskFlags.all_valid]  # GDAL's defaults: no mask
    found = open_blob(geo_engine.io, geo_engine.settings.input_container, "why/scene.tif", tmp_path / "scratch")
    assert found.source.remote and found.sidecars.mask is not None and found.sidecars.names() == [
        f"{geo_engine.settings.input_container}/why/scene.tif.msk"]
    with open_raster(found.source, sidecars=found.sidecars) as raster:
        assert np.array_equal(raster.read_mask(), mask)
    assert not (tmp_path / "scratch").exists()  # nothing was downloaded


# ------------------------------------------------------------------------------ no whole-file downloads
def test_a_small_blob_is_read_whole_and_gives_the_item_a_ranged_read_gives(geo_engine, tmp_path):
    """Below WHOLE_READ_BYTES one GET replaces the signature read and GDAL's ranged reads; same item."""
    from controller_geo_common import CatalogTask, build_blob_item
    from controller_sources import open_blob

    src, _ = masked_scene(tmp_path, size=256)
    upload(geo_engine, src, "small/scene.tif")
    upload(geo_engine, tmp_path / "scene.tif.msk", "small/scene.tif.msk")
    container = geo_engine.settings.input_container
    task = CatalogTask(container=container, blob="small/scene.tif", collection_id="small")
    assert src.stat().st_size < geo_engine.settings.whole_read_bytes
    whole = open_blob(geo_engine.io, container, "small/scene.tif", tmp_path / "whole")
    assert not whole.source.remote and whole.describe()["read"] == "read whole into scratch"
    assert whole.sidecars.mask is not None and not whole.sidecars.mask.remote
    item_whole, _ = build_blob_item(geo_engine.io, task, tmp_path / "a")
    geo_engine.settings.whole_read_bytes = src.stat().st_size - 1
    assert open_blob(geo_engine.io, container, "small/scene.tif", tmp_path / "ranged").source.remote
    item_ranged, _ = build_blob_item(geo_engine.io, task, tmp_path / "b")
    checksum = item_whole["assets"]["data"].pop("file:checksum")  # the bytes were all here: hashed
    assert checksum == "1220" + hashlib.sha256(src.read_bytes()).hexdigest()
    assert "file:checksum" not in item_ranged["assets"]["data"]  # read by ranges: never whole
    for item in (item_whole, item_ranged):
        item["properties"].pop("created"), item["properties"].pop("updated")
    assert item_whole == item_ranged and item_whole["assets"]["mask"]


def test_a_listed_blob_that_grew_past_the_whole_read_limit_is_read_by_ranges(geo_engine, tmp_path):
    from controller_sources import open_blob

    container = geo_engine.settings.input_container
    src = write_raster(tmp_path / "g.tif", smooth_image(1, 128, 128))
    upload(geo_engine, src, "grew/g.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    upload(geo_engine, tmp_path / "empty.tif", "grew/empty.tif")
    geo_engine.settings.whole_read_bytes = src.stat().st_size - 1  # listed small, now one byte too large
    found = open_blob(geo_engine.io, container, "grew/g.tif", tmp_path / "a", listed_size=100)
    assert found.source.remote and found.info.size == src.stat().st_size
    assert not (tmp_path / "a" / "input.tif").exists()  # the partial read is not left behind
    empty = open_blob(geo_engine.io, container, "grew/empty.tif", tmp_path / "b", listed_size=0)
    assert not empty.source.remote and empty.info.size == 0 and (tmp_path / "b" / "input.tif").stat().st_size == 0


def test_inputs_are_read_in_place_and_resources_are_reported(geo_engine, azurite, tmp_path):
    src = write_raster(tmp_path / "plain.tif", smooth_image(3, 1200, 1200), tiled=True, blockxsize=256,
                       blockysize=256)
    size = src.stat().st_size
    geo_engine.settings.whole_read_bytes = 0  # inputs as large ones are read: in place, by ranges
    upload(geo_engine, src, "plain/plain.tif")
    status = run_job(geo_engine, "process_raster", {"blob": "plain/plain.tif"})
    assert status["status"] == "completed", status.get("error_details")
    (raster,) = status["result_data"]["rasters"]
    validated, cog, item = raster["input"], raster["cog"], raster["item"]
    assert validated["resources"]["peak_scratch_mib"] == 0  # nothing of the input was written to scratch
    assert item["resources"]["peak_scratch_mib"] == 0  # the catalog step reads the COG in place too
    assert 0 < cog["resources"]["peak_scratch_mib"] * MIB < size  # only the output (it compresses well)
    assert cog["resources"]["peak_rss_mib"] > 0 and "rss_increase_mib" in cog["resources"]
    # SAS_ENABLED=false: no URL GDAL could use, so the input is downloaded (and the meter sees it)
    settings = fresh_settings(azurite.connection_string, sas_enabled=False, **geo_engine.settings.model_dump(
        include={"input_container", "output_container", "work_dir"}))
    engine = Engine(Repositories(settings).ensure())
    status = run_job(engine, "validate_raster", {"blob": "plain/plain.tif"})
    assert status["status"] == "completed", status.get("error_details")
    validated = status["result_data"]["raster"]
    assert validated["input"]["read"] == "read whole into scratch"
    assert validated["resources"]["peak_scratch_mib"] >= round(size / MIB, 3) - 0.001  # the whole input


# ----------------------------------------------------------------------------------------- failure codes
def test_failures_carry_a_code_in_tasks_status_and_metrics(geo_engine, tmp_path):
    (tmp_path / "text.tif").write_text("not an image\n" * 10)
    upload(geo_engine, tmp_path / "text.tif", "codes/text.tif")
    upload(geo_engine, write_raster(tmp_path / "nocrs.tif", smooth_image(1, 32, 32), crs=None), "codes/nocrs.tif")
    upload(geo_engine, write_raster(tmp_path / "space.tif", smooth_image(1, 32, 32), crs=GEOS,
                                    transform=from_bounds(5.5e6, 5.5e6, 9e6, 9e6, 32, 32)), "codes/space.tif")
    expected = {"codes/missing.tif": ErrorCode.NOT_FOUND, "codes/text.tif": ErrorCode.NOT_A_RASTER,
                "codes/nocrs.tif": ErrorCode.NO_CRS, "codes/space.tif": ErrorCode.OFF_GLOBE}
    for blob, code in expected.items():
        status = run_job(geo_engine, "validate_raster", {"blob": blob})
        assert status["status"] == "failed"
        (task,) = tasks_of(geo_engine, status["job_id"])
        assert task["error_code"] == code.value and task["error_details"], task
        (recent,) = status["recent_errors"]
        assert recent["error_code"] == code.value and recent["status"] == "failed"
        code_, one = api_listing.get_task(geo_engine, status["job_id"], task["task_id"])
        assert one["error_code"] == code.value
    code_, metrics = api_system.metrics(geo_engine)
    assert code_ == 200
    by_code = metrics["task_types"]["raster_validate"]["failures_by_code"]
    assert {k: by_code.get(k) for k in ("not_found", "not_a_raster", "no_crs", "off_globe")} == {
        "not_found": 1, "not_a_raster": 1, "no_crs": 1, "off_globe": 1}
    assert metrics["failures_by_code"]["off_globe"] >= 1
    schemas = api_openapi.document("http://test")["components"]["schemas"]
    for model in ("TaskView", "TaskErrorSummary"):
        ref = json.dumps(schemas[model]["properties"]["error_code"])
        assert "ErrorCode" in ref
    assert sorted(schemas["ErrorCode"]["enum"]) == sorted(c.value for c in ErrorCode)


def test_a_task_that_gives_up_says_whether_it_timed_out_or_storage_kept_failing():
    task = TaskRecord(job_id="j" * 64, task_id="jjjjjjjjjjjj-s01-t000000", stage=1, index=0, task_type="x",
                      status=Status.QUEUED, attempts=5)
    assert gave_up_code(task) == ErrorCode.TIMEOUT  # the worker stopped every time: nothing recorded
    task.last_error = "attempt 5 did not finish within its 600s lease (worker stopped or overran)"
    assert gave_up_code(task) == ErrorCode.TIMEOUT
    task.last_error = "storage timeout while uploading"
    assert gave_up_code(task) == ErrorCode.STORAGE

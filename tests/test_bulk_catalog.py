"""Bulk cataloguing (issue #11): one task per file builds its item, load tasks upsert chunks of items with
pypgstac's Loader. In-process engine on real Azurite and real PostGIS + pgstac."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import rasterio
from pydantic import ValidationError
from pypgstac.load import Loader

import api_jobs
import controller_geo_common
import engine_jobs
from controller_geo_common import LoadItemsTask
from conftest_geo import smooth_image, write_raster
from errors import TaskError
from models import Status
from queue_driver import QueueDriver
from repository_pgstac import PgstacRepository
from support import submit

N = 10
CHUNK = 4  # so N items make three load tasks (4, 4, 2)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(controller_geo_common, "LOAD_CHUNK_ITEMS", CHUNK)


def upload_rasters(engine, tmp: Path, n: int = N, prefix: str = "bulk/") -> list[str]:
    """n small GeoTIFFs on distinct footprints, each with its own TIFF datetime."""
    names = []
    for i in range(n):
        path = write_raster(tmp / f"r{i}.tif", smooth_image(1, 32, 32, seed=i),
                            transform=rasterio.transform.from_origin(400_000 + 2_000 * i, 4e6 - 3_000 * i, 30, 30),
                            tags={"TIFFTAG_DATETIME": f"2024:0{1 + i % 9}:{10 + i:02d} 12:00:00"})
        names.append(f"{prefix}tile{i:02d}.tif")
        engine.repos.rasters.upload(engine.settings.input_container, names[-1], path, "image/tiff")
    return names


def submit_bulk(engine, job_type: str = "sync_container", **params) -> str:
    """A bulk job over the input container's bulk/ prefix."""
    body = {"container": engine.settings.input_container, "prefix": "bulk/", **params}
    return submit(engine, body, job_type=job_type, codes=(200, 202))


def status(engine, job_id: str) -> dict:
    return api_jobs.status(engine, job_id)[1]


def snapshot(engine, collection_id: str) -> tuple[dict, dict]:
    """Every stored item row of the collection (id -> xmin, content), and the collection itself. ``xmin``
    changes whenever PostgreSQL rewrites a row, even with identical content."""
    with psycopg.connect(engine.io.pgstac().settings.dsn) as conn:
        rows = conn.execute("SELECT id, xmin::text, content FROM items WHERE collection = %s",
                            [collection_id]).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}, engine.io.pgstac().get_collection(collection_id)


def check_extent(engine, collection_id: str) -> None:
    """The stored extent is exactly the union of the stored items' bboxes and datetimes."""
    items = engine.io.pgstac().search(collections=[collection_id], limit=1000)
    collection = engine.io.pgstac().get_collection(collection_id)
    (bbox,) = collection["extent"]["spatial"]["bbox"]
    assert bbox == pytest.approx([min(i["bbox"][0] for i in items), min(i["bbox"][1] for i in items),
                                  max(i["bbox"][2] for i in items), max(i["bbox"][3] for i in items)])
    times = sorted(datetime.fromisoformat(i["properties"]["datetime"]) for i in items)
    ((start, end),) = collection["extent"]["temporal"]["interval"]
    assert (datetime.fromisoformat(start), datetime.fromisoformat(end)) == (times[0], times[-1])


def test_sync_builds_per_file_and_loads_every_item_in_chunks_with_a_true_extent(geo_engine, tmp_path):
    upload_rasters(geo_engine, tmp_path)
    job_id = submit_bulk(geo_engine)
    QueueDriver(geo_engine).run(job_id, timeout=300)
    done = status(geo_engine, job_id)
    assert done["status"] == "completed", done.get("error_details")
    assert [(s["name"], s["tasks"]["total"]) for s in done["stages"]] == [
        ("list", 1), ("build_items", N), ("load_items", 3)]
    result = done["result_data"]
    collection_id = result["collection_id"]
    assert (result["listed"], result["created"], result["updated"], result["failed"], result["loaded"]) == \
        (N, N, 0, 0, N)
    catalogue = geo_engine.io.pgstac()
    assert catalogue.count_items(collection_id) == N
    assert catalogue.stored_ids(collection_id, result["items"]) == set(result["items"])
    check_extent(geo_engine, collection_id)
    loads = geo_engine.store.list_tasks(job_id, 3)  # each names a range of build tasks, not the items
    assert [(t.parameters["stage"], t.parameters["first"], t.parameters["last"], t.parameters["built"])
            for t in loads] == [(2, 0, 3, 4), (2, 4, 7, 4), (2, 8, 9, 2)]
    assert [t.result["loaded"] for t in loads] == [4, 4, 2] and "items" not in loads[0].parameters


def test_a_load_chunk_delivered_twice_changes_nothing(geo_engine, tmp_path):
    upload_rasters(geo_engine, tmp_path)
    job_id = submit_bulk(geo_engine)
    QueueDriver(geo_engine, copies=2, shuffle_seed=7).run(job_id, timeout=300)  # every message twice
    done = status(geo_engine, job_id)
    assert done["status"] == "completed", done.get("error_details")
    collection_id = done["result_data"]["collection_id"]
    before = snapshot(geo_engine, collection_id)
    assert len(before[0]) == N
    for task in geo_engine.store.list_tasks(job_id, 3):  # each load handler run again, as a late redelivery would
        outcome = geo_engine._call_handler(task)  # issue #21: a tagged result (Completed, Failed or Retry)
        assert (outcome.status, getattr(outcome, "error", None)) == (Status.COMPLETED, None)
        assert (outcome.result["created"], outcome.result["updated"]) == (0, task.parameters["built"])
    assert snapshot(geo_engine, collection_id) == before  # same rows, same content, none rewritten (xmin)
    check_extent(geo_engine, collection_id)


def test_a_load_chunk_that_fails_midway_is_retried_and_loses_no_item(geo_engine, tmp_path, monkeypatch):
    upload_rasters(geo_engine, tmp_path)
    original, calls = Loader.load_items, []

    def flaky(self, file, *args, **kwargs):
        items = list(file)
        calls.append(len(items))
        if len(calls) == 1:  # the first load writes part of its chunk, then loses its connection
            original(self, iter(items[:2]), *args, **kwargs)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return original(self, iter(items), *args, **kwargs)

    monkeypatch.setattr(Loader, "load_items", flaky)
    job_id = submit_bulk(geo_engine)
    QueueDriver(geo_engine).run(job_id, timeout=300)
    done = status(geo_engine, job_id)
    assert done["status"] == "completed", done.get("error_details")
    assert len(calls) == 4  # three chunks, one of them twice
    loads = geo_engine.store.list_tasks(job_id, 3)
    assert sorted(t.attempts for t in loads) == [1, 1, 2]
    retried = next(t for t in loads if t.attempts == 2)
    assert "pgstac unavailable" in retried.last_error
    collection_id = done["result_data"]["collection_id"]
    assert geo_engine.io.pgstac().count_items(collection_id) == N
    assert done["result_data"]["loaded"] == N
    check_extent(geo_engine, collection_id)


def test_a_chunk_that_fails_for_good_fails_the_job_and_a_retry_loads_it(geo_engine, tmp_path, monkeypatch):
    """sync_container tolerates failed files, never a failed load: that would lose a whole chunk."""
    upload_rasters(geo_engine, tmp_path)
    original = PgstacRepository.bulk_load
    doomed: list[str] = []

    def refuse_one_chunk(self, items, mode="upsert"):
        items = list(items)
        doomed.extend([] if doomed else [items[0]["id"]])  # the first chunk loaded fails, every time
        if doomed[0] in {i["id"] for i in items}:
            raise TaskError("pgstac bulk load rejected the items: test")
        return original(self, items, mode)

    monkeypatch.setattr(PgstacRepository, "bulk_load", refuse_one_chunk)
    job_id = submit_bulk(geo_engine)
    QueueDriver(geo_engine).run(job_id, timeout=300)
    failed = status(geo_engine, job_id)
    assert failed["status"] == "failed"
    assert "stage 3 (load_items) failed: 1 of 3 tasks failed" in failed["error_details"]
    collection_id = geo_engine.settings.default_collection
    held = geo_engine.io.pgstac().count_items(collection_id)
    assert held in (N - CHUNK, N - 2)  # the other two chunks are in

    monkeypatch.setattr(PgstacRepository, "bulk_load", original)  # the cause is fixed; the operator retries
    geo_engine.retry(job_id)
    QueueDriver(geo_engine).run(job_id, timeout=300)
    done = status(geo_engine, job_id)
    assert done["status"] == "completed", done.get("error_details")
    assert geo_engine.io.pgstac().count_items(collection_id) == N
    check_extent(geo_engine, collection_id)


def test_a_corrupt_file_fails_its_own_build_task_and_the_others_load(geo_engine, tmp_path, monkeypatch):
    names = upload_rasters(geo_engine, tmp_path, n=5)
    broken = tmp_path / "broken.tif"
    broken.write_bytes((tmp_path / "r0.tif").read_bytes()[:300])
    geo_engine.repos.rasters.upload(geo_engine.settings.input_container, "bulk/broken.tif", broken, "image/tiff")
    job_id = submit_bulk(geo_engine)
    read: list[int | None] = []  # which stages' outcomes the engine reads back
    original = engine_jobs.outcomes
    monkeypatch.setattr(engine_jobs, "outcomes",
                        lambda store, job, stage=None: read.append(stage) or original(store, job, stage))
    QueueDriver(geo_engine).run(job_id, timeout=300)
    done = status(geo_engine, job_id)
    assert done["status"] == "completed", done.get("error_details")
    result = done["result_data"]
    assert (result["listed"], result["created"], result["failed"], result["loaded"]) == (6, 5, 1, 5)
    # the built items are never read whole: the loads are planned from the build tasks' status alone, each
    # load task reads its range, and the result comes from the listing and the loads
    assert 2 not in read and read.count(3) == 1 and sorted(result["items"]) == sorted(
        geo_engine.io.pgstac().stored_ids(result["collection_id"], result["items"]))
    (failure,) = result["failed_tasks"]
    build = {t.task_id: t for t in geo_engine.store.list_tasks(job_id, 2)}
    assert build[failure["task_id"]].parameters["blob"] == "bulk/broken.tif"
    assert failure["error"].startswith(f"corrupt raster: {geo_engine.settings.input_container}/bulk/broken.tif")
    assert sorted(t.status for t in build.values()) == [Status.COMPLETED] * 5 + [Status.FAILED]
    assert geo_engine.io.pgstac().count_items(result["collection_id"]) == len(names)


def test_batch_builds_each_cog_item_and_loads_them_in_bulk(geo_engine, tmp_path):
    upload_rasters(geo_engine, tmp_path, n=5)
    job_id = submit_bulk(geo_engine, "process_raster_batch")
    QueueDriver(geo_engine).run(job_id, timeout=300)
    done = status(geo_engine, job_id)
    assert done["status"] == "completed", done.get("error_details")
    assert [(s["name"], s["tasks"]["total"]) for s in done["stages"]] == [
        ("validate", 5), ("create_cog", 5), ("build_items", 5), ("load_items", 2)]
    rasters = done["result_data"]["rasters"]
    assert {r["item"]["action"] for r in rasters} == {"created"}
    assert all("item" not in r["item"] for r in rasters)  # the job result reports items, it does not hold them
    collection_id = rasters[0]["item"]["collection_id"]
    assert geo_engine.io.pgstac().count_items(collection_id) == 5
    stored = geo_engine.io.pgstac().get_item(collection_id, rasters[0]["item"]["item_id"])
    assert stored["assets"]["data"]["href"] == rasters[0]["cog"]["url"]
    check_extent(geo_engine, collection_id)


def test_two_files_of_one_item_id_load_once_and_count_as_built_twice(geo_engine, tmp_path):
    upload_rasters(geo_engine, tmp_path, n=3)
    twin = tmp_path / "twin.tif"
    twin.write_bytes((tmp_path / "r1.tif").read_bytes())
    geo_engine.repos.rasters.upload(geo_engine.settings.input_container, "bulk/tile01.tiff", twin, "image/tiff")
    job_id = submit_bulk(geo_engine)
    QueueDriver(geo_engine).run(job_id, timeout=300)
    done = status(geo_engine, job_id)
    assert done["status"] == "completed", done.get("error_details")
    result = done["result_data"]
    assert (result["listed"], result["failed"], result["loaded"], result["created"]) == (4, 0, 3, 3)
    assert sorted(result["items"]) == sorted(set(result["items"])) and len(result["items"]) == 3
    assert geo_engine.io.pgstac().count_items(result["collection_id"]) == 3


def test_a_load_task_names_a_range_or_items_never_both_nor_neither():
    item = {"id": "a", "collection": "c"}
    assert LoadItemsTask(collection_id="c", stage=2, first=0, last=3).items is None
    assert LoadItemsTask(collection_id="c", items=[item]).stage is None  # plans written before ranges
    for bad in ({}, {"stage": 2, "first": 0, "last": 3, "items": [item]}, {"stage": 2, "first": 4, "last": 3},
                {"stage": 2, "first": 0}):
        with pytest.raises(ValidationError):
            LoadItemsTask(collection_id="c", **bad)

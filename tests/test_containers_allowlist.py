"""Jobs reach only the containers settings allow (security issue #8, item 4), on real Azurite.

At submit, a refused container is a 400 naming the allowed ones; at run time the blob store handed to tasks
refuses the same containers, so a stored plan or a forged task cannot reach them either.
"""
from __future__ import annotations

import json
import uuid

import pytest
import rasterio
from pydantic import ValidationError

import api_jobs
from base_controller import TaskContext
from config import Settings
from support import fresh_settings
from conftest_geo import smooth_image, write_raster
from controller_factory import get_handler
from errors import TaskError
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine

HOST_CONTAINER = "azure-webjobs-hosts"
UNLISTED = "not-on-the-list"


def submit_answer(engine, job_type: str, params: dict) -> tuple[int, dict]:
    return api_jobs.respond(lambda: api_jobs.submit(engine, job_type, json.dumps(params).encode(), "http://t"))


def run_task(engine, task_type: str, parameters: dict):
    """Call a handler the way the engine does: parameters validated without submit context, the engine's IO."""
    handler = get_handler(task_type)
    params = handler.parameters_model.model_validate(parameters)
    return handler.run(params, TaskContext("job", "task", 1, 0, 1, engine.io))


def raster(tmp_path, name: str = "r.tif"):
    return write_raster(tmp_path / name, smooth_image(1, 64, 64),
                        transform=rasterio.transform.from_origin(400_000, 4_000_000, 30, 30))


# ------------------------------------------------------------------ settings
def test_default_allow_list_is_the_input_and_output_containers():
    s = Settings(input_container="in-a", output_container="out-b")
    assert s.job_containers == ("in-a", "out-b")
    assert Settings(input_container="same", output_container="same").job_containers == ("same",)


def test_allowed_containers_come_comma_separated_from_the_environment(monkeypatch):
    monkeypatch.setenv("ALLOWED_CONTAINERS", " scenes , cogs-public,")
    assert Settings().job_containers == ("scenes", "cogs-public")


@pytest.mark.parametrize("overrides", [
    {"allowed_containers": "rasters,azure-webjobs-secrets"},
    {"allowed_containers": "$logs"},
    {"output_container": "azure-webjobs-hosts"},
    {"allowed_containers": "rasters,geoetl-payloads"},
    {"input_container": "geoetl-payloads"},
], ids=["host-secrets", "dollar-logs", "host-as-output", "payloads-listed", "payloads-as-input"])
def test_host_and_payload_containers_are_a_startup_error(overrides):
    with pytest.raises(ValidationError, match="jobs may"):
        Settings(payload_container="geoetl-payloads", **overrides)


# ------------------------------------------------------------------ submit
@pytest.mark.parametrize("job_type,extra", [
    ("list_container", {}), ("sync_container", {}), ("process_raster", {"blob": "a/b.tif"}),
])
@pytest.mark.parametrize("which", ["host", "payloads", "unlisted"])
def test_a_refused_container_is_a_400_naming_the_allowed_ones(engine, job_type, extra, which):
    container = {"host": HOST_CONTAINER, "payloads": engine.settings.payload_container, "unlisted": UNLISTED}[which]
    code, body = submit_answer(engine, job_type, {"container": container, **extra})
    assert code == 400, body
    assert body["error"] == "invalid_parameters"
    assert body["allowed_containers"] == ["rasters", "cogs"]
    (error,) = body["errors"]
    assert error["field"] == "container" and error["type"] == "container_not_allowed"
    assert container in error["message"] and "rasters, cogs" in error["message"]


@pytest.mark.parametrize("field", ["output_container", "container"])
def test_every_container_field_is_checked(engine, field):
    body = {"blobs": ["a.tif"], field: engine.settings.payload_container}
    code, answer = submit_answer(engine, "process_raster_batch", body)
    assert code == 400 and answer["errors"][0]["field"] == field
    code, answer = submit_answer(engine, "process_large_raster", {"blob": "a.tif", field: HOST_CONTAINER})
    assert code == 400 and answer["errors"][0]["field"] == field


def test_allowed_containers_are_accepted_at_submit(engine):
    assert submit_answer(engine, "list_container", {})[0] == 202
    assert submit_answer(engine, "process_raster",
                         {"container": "cogs", "blob": "a.tif", "output_container": "rasters"})[0] == 202


# ------------------------------------------------------------------ end to end with an explicit list
@pytest.fixture
def listed_engine(azurite, pgstac_server, tmp_path) -> Engine:
    """An engine whose ALLOWED_CONTAINERS names two containers of its own, not its input/output ones."""
    pg = pgstac_server.settings
    run = uuid.uuid4().hex[:8]
    settings = fresh_settings(azurite.connection_string, retry_base_delay_s=0, sweeper_grace_s=0,
                              pgstac_host=pg.host, pgstac_port=pg.port, pgstac_dbname=pg.dbname,
                              pgstac_user=pg.user, pgstac_password=pg.password,
                              allowed_containers=f"scenes-{run},published-{run}",
                              default_collection=f"c-{run}", work_dir=str(tmp_path / "work"))
    engine = Engine(Repositories(settings).ensure())
    engine.repos.rasters.ensure_container(f"scenes-{run}")
    return engine


def test_listed_containers_work_end_to_end(listed_engine, tmp_path):
    scenes, published = listed_engine.settings.job_containers
    listed_engine.repos.rasters.upload(scenes, "in/r.tif", raster(tmp_path))
    code, body = submit_answer(listed_engine, "process_raster", {"container": scenes, "blob": "in/r.tif",
                                                          "output_container": published})
    assert code == 202, body
    QueueDriver(listed_engine).run(body["job_id"], timeout=120)
    status = api_jobs.status(listed_engine, body["job_id"])[1]
    assert status["status"] == "completed", status.get("error_details")
    (output,) = status["result_data"]["outputs"]
    assert output["container"] == published and output["href"].startswith(output["url"] + "?")
    assert [b.name for b in listed_engine.repos.rasters.list(published)] == [output["blob"]]
    # the settings' input container is not on this list: a job defaulting to it is refused
    code, body = submit_answer(listed_engine, "list_container", {})
    assert code == 400 and body["allowed_containers"] == [scenes, published]


# ------------------------------------------------------------------ task-level guard
def test_tasks_cannot_list_or_read_a_forbidden_container(engine, tmp_path):
    payloads = engine.settings.payload_container
    engine.repos.blobs.put_json("someone-elses-job", {"secret": 1})  # the payload container is not empty
    engine.repos.rasters.ensure_container(UNLISTED)
    engine.repos.rasters.upload(UNLISTED, "r.tif", raster(tmp_path))  # the blob exists: only the guard stops it
    for container in (payloads, UNLISTED):
        with pytest.raises(TaskError, match=f"container '{container}' is not open to jobs; allowed containers: "
                                            "rasters, cogs"):
            run_task(engine, "container_inventory", {"container": container})
        with pytest.raises(TaskError, match="not open to jobs"):
            run_task(engine, "raster_validate", {"container": container, "blob": "r.tif"})
    with pytest.raises(TaskError, match="not open to jobs"):
        engine.io.rasters.read_sas_url(HOST_CONTAINER, "locks/x")  # no SAS for a host container
    with pytest.raises(TaskError, match="not open to jobs"):
        list(engine.io.rasters.list(HOST_CONTAINER))


def test_tasks_cannot_write_a_forbidden_container(engine, tmp_path):
    engine.repos.rasters.ensure_container("rasters")
    engine.repos.rasters.upload("rasters", "r.tif", raster(tmp_path))
    before = {b.name for b in engine.repos.rasters.list(engine.settings.payload_container)}
    with pytest.raises(TaskError, match="not open to jobs"):
        run_task(engine, "raster_create_cog", {"container": "rasters", "blob": "r.tif",
                                               "output_container": engine.settings.payload_container,
                                               "output_blob": "r_cog.tif"})
    assert {b.name for b in engine.repos.rasters.list(engine.settings.payload_container)} == before


def test_a_stored_job_naming_a_container_no_longer_allowed_fails_its_task(azurite, tmp_path):
    """Submitted while ALLOWED_CONTAINERS named it, run after it was removed: the engine re-validates stored
    parameters without submit context, and the blob store handed to the task still refuses the container."""
    before = fresh_settings(azurite.connection_string, allowed_containers=f"rasters,{UNLISTED}")
    submitter = Engine(Repositories(before).ensure())
    submitter.repos.rasters.ensure_container(UNLISTED)
    submitter.repos.rasters.upload(UNLISTED, "r.tif", raster(tmp_path))
    code, body = submit_answer(submitter, "list_container", {"container": UNLISTED})
    assert code == 202, body
    after = Settings(**{**before.model_dump(), "allowed_containers": ()})
    worker = Engine(Repositories(after).ensure())
    QueueDriver(worker).run(body["job_id"], timeout=60)
    status = api_jobs.status(worker, body["job_id"])[1]
    assert status["status"] == "failed"
    assert f"container '{UNLISTED}' is not open to jobs; allowed containers: rasters, cogs" in status["error_details"]


def test_intermediates_reach_only_the_apps_own_tiles(engine, tmp_path):
    ref = engine.repos.blobs.put_json("someone-elses-job", {"secret": 1})
    with pytest.raises(TaskError, match="not under tiles/"):
        engine.io.intermediates.download(ref.blob, tmp_path / "x")
    with pytest.raises(TaskError, match="not under tiles/"):
        engine.io.intermediates.download("tiles/../" + ref.blob, tmp_path / "x")
    engine.io.intermediates.upload("tiles/a/t.tif", raster(tmp_path))
    assert engine.io.intermediates.download("tiles/a/t.tif", tmp_path / "t.tif").size > 0

"""Data arrival: a watch makes each new or changed raster blob start one job, once per blob version.

Both paths that feed ``function_app.blob_arrived`` are exercised over a real (private) Azurite: Event
Grid (the function called with the events Azure would send, redelivered, and seen by a second instance)
and the local host's own container watching (two watchers sharing receipts). One test runs a real small
GeoTIFF through a local host process end to end: upload -> event -> validate_raster job -> completed.
"""
from __future__ import annotations

import io
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import azure.functions as func
import numpy as np
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from support import fresh_settings, settings_env
from conftest_geo import write_raster
from host_proc import HostProcess

import api_jobs
import api_triggers
import function_app
from errors import TransientError
from local_host import FunctionBinding
from local_host_blobs import BlobEventOptions, BlobEventSource, receipt_key
from repositories import Repositories
from task_manager import Engine

TIFF = b"II*\x00" + b"\x00" * 60  # the first bytes of a TIFF: enough for a job to be submitted (not run)


@pytest.fixture
def arrivals(azurite, monkeypatch):
    """An engine whose input container is this test's, a blob client on it, and function_app using it."""
    container = f"in-{uuid.uuid4().hex[:8]}"
    settings = fresh_settings(azurite.connection_string, input_container=container,
                              output_container=f"out-{uuid.uuid4().hex[:8]}")
    engine = Engine(Repositories(settings).ensure())
    engine.repos.rasters.ensure_container(container)
    monkeypatch.setattr(function_app, "_engine", engine)
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)
    return SimpleNamespace(engine=engine, settings=settings, container=container, client=client, azurite=azurite)


def watch(engine: Engine, job_type: str = "validate_raster", prefix: str = "incoming/", **options) -> dict:
    body = {"container": engine.settings.input_container, "prefix": prefix, "job_type": job_type, "options": options}
    code, answer = api_jobs.respond(lambda: api_triggers.create_watch(engine, json.dumps(body).encode()))
    assert code == 201, answer
    return answer


def upload(client, name: str, data: bytes = TIFF):
    client.upload_blob(name, data, overwrite=True)
    return client.get_blob_client(name).get_blob_properties()


def event_for(container: str, props, event_type: str = "Microsoft.Storage.BlobCreated", subject: str | None = None,
              **data) -> func.EventGridEvent:
    """The event Azure's storage system topic sends (Event Grid schema; the eTag comes bare)."""
    return func.EventGridEvent(
        id=str(uuid.uuid4()), topic="/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z",
        subject=subject or f"/blobServices/default/containers/{container}/blobs/{props.name}", event_type=event_type,
        event_time=props.last_modified, data_version="",
        data={"api": "PutBlob", "eTag": props.etag.strip('"'), "contentType": "image/tiff",
              "contentLength": props.size, "blobType": "BlockBlob", "url": f"https://z/{container}/{props.name}",
              **data})


def jobs(engine: Engine) -> list:
    rows, _ = engine.store.list_jobs(None, None, 1000, None)
    return [engine.store.get_job(r["job_id"]) for r in rows]


# ------------------------------------------------------------------ Event Grid: the function body
def test_one_job_per_blob_version_whatever_the_deliveries(arrivals):
    watch(arrivals.engine)
    first = upload(arrivals.client, "incoming/scene.tif")
    event = event_for(arrivals.container, first)
    function_app.blob_arrived(event)
    (job,) = jobs(arrivals.engine)
    assert job.job_type == "validate_raster"
    assert job.parameters == {"container": arrivals.container, "blob": "incoming/scene.tif",
                              "source_etag": first.etag.strip('"')}
    function_app.blob_arrived(event)  # Event Grid delivers at least once
    second_instance = Engine(Repositories(arrivals.settings).ensure())
    second_instance.triggers.on_blob_event(event.id, event.event_type, event.subject, event.get_json())
    assert len(jobs(arrivals.engine)) == 1

    overwritten = upload(arrivals.client, "incoming/scene.tif", TIFF + b"v2")
    assert overwritten.etag != first.etag
    function_app.blob_arrived(event_for(arrivals.container, overwritten))
    function_app.blob_arrived(event)  # a late redelivery of the first version's event
    versions = sorted(j.parameters["source_etag"] for j in jobs(arrivals.engine))
    assert versions == sorted([first.etag.strip('"'), overwritten.etag.strip('"')])


@pytest.mark.parametrize("name", [
    "incoming/scene.tif.aux.xml", "incoming/scene.tif.msk", "incoming/scene.tif.ovr", "incoming/scene.tfw",
    "incoming/scene.tifw", "incoming/scene.wld", "incoming/scene.prj", "incoming/readme.txt", "incoming/scene.jp2",
    "outside/scene.tif",  # not under the watch's prefix
])
def test_sidecars_other_files_and_unwatched_blobs_start_nothing(arrivals, name):
    watch(arrivals.engine)
    function_app.blob_arrived(event_for(arrivals.container, upload(arrivals.client, name)))
    assert jobs(arrivals.engine) == []


def test_other_events_empty_blobs_and_malformed_events_start_nothing(arrivals):
    watch(arrivals.engine)
    props = upload(arrivals.client, "incoming/scene.tif")
    function_app.blob_arrived(event_for(arrivals.container, props, "Microsoft.Storage.BlobDeleted"))
    function_app.blob_arrived(event_for(arrivals.container, props, contentLength=0))  # ADLS CreateFile
    function_app.blob_arrived(event_for(arrivals.container, props, eTag=""))  # no version: cannot dedupe
    function_app.blob_arrived(event_for(arrivals.container, props, subject="/somewhere/else"))
    assert jobs(arrivals.engine) == []


def test_every_covering_watch_starts_its_own_job(arrivals):
    watch(arrivals.engine, "validate_raster", prefix="")
    watch(arrivals.engine, "process_raster", prefix="incoming/", cog_profile="zstd")
    function_app.blob_arrived(event_for(arrivals.container, upload(arrivals.client, "incoming/scene.tif")))
    assert sorted(j.job_type for j in jobs(arrivals.engine)) == ["process_raster", "validate_raster"]
    (cog,) = [j for j in jobs(arrivals.engine) if j.job_type == "process_raster"]
    assert cog.parameters["cog_profile"] == "zstd"


def test_a_transient_error_is_raised_so_the_event_comes_again(arrivals, monkeypatch):
    watch(arrivals.engine)
    event = event_for(arrivals.container, upload(arrivals.client, "incoming/scene.tif"))
    real = arrivals.engine.submit
    monkeypatch.setattr(arrivals.engine, "submit", lambda *a, **k: (_ for _ in ()).throw(TransientError("503")))
    with pytest.raises(TransientError):
        function_app.blob_arrived(event)
    monkeypatch.setattr(arrivals.engine, "submit", real)
    function_app.blob_arrived(event)
    assert len(jobs(arrivals.engine)) == 1


# ------------------------------------------------------------------ the local host watching containers itself
def source(arrivals, table: str, **options) -> BlobEventSource:
    binding = FunctionBinding(name="blob_arrived", trigger="event_grid", arg_name="event",
                              func=options.pop("func", function_app.blob_arrived))
    blobs = BlobServiceClient.from_connection_string(arrivals.azurite.connection_string)
    receipts = TableServiceClient.from_connection_string(arrivals.azurite.connection_string).get_table_client(table)
    return BlobEventSource(binding, blobs, receipts, BlobEventOptions(containers=(arrivals.container,), **options))


def test_two_local_watchers_start_one_job_per_blob_version(arrivals):
    """Two local hosts' watchers share the receipts; a burst, sidecars, then overwrites."""
    watch(arrivals.engine)
    upload(arrivals.client, "incoming/before.tif")  # there before the subscription: Event Grid never tells
    time.sleep(1.1)  # blob times have whole seconds
    table = f"receipts{uuid.uuid4().hex[:8]}"
    watchers = [source(arrivals, table), source(arrivals, table)]
    assert [w.poll_once(wait=True) for w in watchers] == [0, 0]  # subscribed; nothing new yet
    names = [f"incoming/scene-{i:03d}.tif" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: upload(arrivals.client, n), names))
        list(pool.map(lambda n: upload(arrivals.client, n + ".aux.xml", b"<xml/>"), names[:10]))

    def both_poll() -> None:
        threads = [threading.Thread(target=w.poll_once, kwargs={"wait": True}) for w in watchers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    both_poll()
    both_poll()
    found = jobs(arrivals.engine)
    assert sorted(j.parameters["blob"] for j in found) == names
    # every blob version was delivered once (sidecars too: the function ignores them), never twice
    assert sum(w.delivered for w in watchers) == 50

    for name in names[:3]:
        upload(arrivals.client, name, TIFF + b"again")
    both_poll()
    found = jobs(arrivals.engine)
    assert len(found) == 43 and len({j.job_id for j in found}) == 43
    assert sum(w.delivered for w in watchers) == 53
    assert sorted(j.parameters["blob"] for j in found if j.parameters["blob"] in names[:3]) == \
        sorted(names[:3] * 2)
    receipts = TableServiceClient.from_connection_string(arrivals.azurite.connection_string).get_table_client(table)
    row = receipts.get_entity(f"blob_arrived.{arrivals.container}", receipt_key(names[0]))
    current = arrivals.client.get_blob_client(names[0]).get_blob_properties().etag.strip('"')
    assert (row["state"], row["etag"], row["attempts"]) == ("done", current, 1)


def test_a_failing_delivery_is_retried_then_poisoned(arrivals):
    calls = []

    def broken(event):
        calls.append(event.id)
        raise RuntimeError("function failed")

    watcher = source(arrivals, f"receipts{uuid.uuid4().hex[:8]}", func=broken, poison_threshold=3)
    watcher.poll_once(wait=True)
    time.sleep(1.1)
    upload(arrivals.client, "incoming/scene.tif")
    for _ in range(5):
        watcher.poll_once(wait=True)
    assert len(calls) == 3 and len(set(calls)) == 1  # the same event (same version) each time
    row = watcher.receipts.get_entity(f"blob_arrived.{arrivals.container}", receipt_key("incoming/scene.tif"))
    assert (row["state"], row["attempts"]) == ("poison", 3) and "function failed" in row["error"]


# ------------------------------------------------------------------ watches over the API
def test_watches_are_created_once_listed_and_deleted(arrivals, monkeypatch):
    engine = arrivals.engine
    created = watch(engine, prefix="a/")
    body = {"container": arrivals.container, "prefix": "a/", "job_type": "validate_raster", "options": {}}
    code, again = api_jobs.respond(lambda: api_triggers.create_watch(engine, json.dumps(body).encode()))
    assert (code, again["watch_id"]) == (200, created["watch_id"])
    monkeypatch.setattr(engine.settings, "watches", [{"container": arrivals.container, "job_type": "process_raster"},
                                                     {"container": "elsewhere", "job_type": "validate_raster"}])
    listed = api_jobs.respond(lambda: api_triggers.list_watches(engine))[1]["watches"]
    assert [(w["source"], w["job_type"]) for w in listed] == [("api", "validate_raster"),
                                                              ("settings", "process_raster")]  # invalid one left out
    from_settings = listed[1]["watch_id"]
    assert api_jobs.respond(lambda: api_triggers.delete_watch(engine, from_settings))[0] == 409
    assert api_jobs.respond(lambda: api_triggers.get_watch(engine, from_settings))[0] == 200
    assert api_jobs.respond(lambda: api_triggers.delete_watch(engine, created["watch_id"]))[0] == 200
    assert api_jobs.respond(lambda: api_triggers.get_watch(engine, created["watch_id"]))[0] == 404
    assert api_jobs.respond(lambda: api_triggers.delete_watch(engine, "f" * 16))[0] == 404


@pytest.mark.parametrize("change, field, says", [
    ({"job_type": "hello_world"}, "job_type", "cannot start it; these can: catalog_file, process_large_raster"),
    ({"job_type": "nope"}, "job_type", "unknown job type 'nope'"),
    ({"options": {"blob": "x.tif"}}, "options.blob", "set by the watch"),
    ({"options": {"cog_profile": "gif"}, "job_type": "process_raster"}, "options.cog_profile", "Input should be"),
    ({"container": "Not_A_Container"}, "container", "not a valid container name"),
    ({"container": "somebody-elses"}, "container", "is not open to jobs"),
    ({"prefix": "a//b"}, "prefix", "empty"),
    ({"prefix": "/abs"}, "prefix", "relative"),
    ({"colour": "red"}, "colour", "Extra"),
])
def test_bad_watches_are_400s_naming_the_field(arrivals, change, field, says):
    body = {"container": arrivals.container, "prefix": "", "job_type": "validate_raster", "options": {}, **change}
    code, answer = api_jobs.respond(lambda: api_triggers.create_watch(arrivals.engine, json.dumps(body).encode()))
    assert code == 400, answer
    assert says in answer["message"] and field in [e["field"] for e in answer["errors"]], answer


# ------------------------------------------------------------------ end to end through a local host process
def test_a_real_geotiff_is_validated_by_the_job_its_arrival_started(arrivals, tmp_path):
    watch(arrivals.engine, "validate_raster", prefix="drop/")
    env = {**settings_env(arrivals.settings), "INPUT_CONTAINER": arrivals.container,
           "OUTPUT_CONTAINER": arrivals.settings.output_container, "LOCAL_HOST_BLOB_EVENTS": arrivals.container,
           "LOCAL_HOST_BLOB_POLL_SECONDS": "0.3"}
    host = HostProcess(env, tmp_path / "host.log",
                       functions=["health", "blob_arrived", "process_job_message", "process_task_message"]).start()
    try:
        receipts = TableServiceClient.from_connection_string(arrivals.azurite.connection_string).get_table_client(
            "localhostblobreceipts")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the host subscribes at its first poll
            try:
                receipts.get_entity("blob_arrived", "subscription")
                break
            except Exception:  # noqa: BLE001 - not yet
                time.sleep(0.2)
        time.sleep(1.1)
        path = write_raster(tmp_path / "scene.tif", np.full((1, 64, 64), 7, dtype="uint8"), crs="EPSG:32633")
        arrivals.client.upload_blob("drop/scene.tif", io.BytesIO(path.read_bytes()))
        arrivals.client.upload_blob("drop/scene.tif.aux.xml", b"<PAMDataset/>")
        deadline, found = time.monotonic() + 90, []
        while time.monotonic() < deadline:
            found = jobs(arrivals.engine)
            if found and all(j.status.value in ("completed", "failed") for j in found):
                break
            time.sleep(0.3)
    finally:
        host.stop()
    (job,) = found
    assert job.status.value == "completed", job.error_details
    raster = job.result_data["raster"]
    assert raster["blob"] == "drop/scene.tif" and raster["epsg"] == 32633 and raster["width"] == 64

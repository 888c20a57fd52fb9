"""Listings, tasks, progress, stuck jobs, job types, health and metrics, on real Azurite."""
from __future__ import annotations

import json
import time

import jsonschema
import pytest

import api_listing
import api_system
import api_jobs
from azurite_proc import Azurite
from support import fresh_settings, submit
from controller_factory import JOB_TYPES
from errors import BadRequestError, NotFoundError
from models import StageMessage, make_task_id
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine


def test_jobs_are_listed_newest_first_filtered_and_paged(engine):
    ids = []
    for i in range(4):
        ids.append(submit(engine, {"n": 1, "message": f"job {i}"}))
        time.sleep(0.005)  # distinct creation milliseconds
    QueueDriver(engine).run()  # these four complete
    ids.append(submit(engine, {"n": 1, "message": "job 4"}))  # this one stays queued
    seen, token, pages = [], None, 0
    while True:
        code, page = api_listing.list_jobs(engine, "http://t", limit="2", continuation=token)
        assert code == 200 and len(page["jobs"]) <= 2
        seen += [j["job_id"] for j in page["jobs"]]
        pages, token = pages + 1, page["continuation"]
        if token is None:
            break
    assert seen == list(reversed(ids)) and pages >= 3
    completed = api_listing.list_jobs(engine, "http://t", status="completed")[1]["jobs"]
    assert [j["job_id"] for j in completed] == list(reversed(ids[:4]))
    assert completed[-1]["status_url"] == f"http://t/api/jobs/status/{ids[0]}"
    queued = api_listing.list_jobs(engine, "http://t", status="queued")[1]["jobs"]
    assert [j["job_id"] for j in queued] == [ids[4]]
    assert api_listing.list_jobs(engine, "http://t", job_type="process_raster")[1]["jobs"] == []
    for bad in ({"status": "sleeping"}, {"limit": "0"}, {"limit": "x"}, {"continuation": "garbage!"},
                {"job_type": "nope"}):
        with pytest.raises(BadRequestError):
            api_listing.list_jobs(engine, "http://t", **bad)


def test_tasks_are_listed_by_stage_and_status_and_read_one_by_one(engine):
    job_id = submit(engine, {"n": 4, "fail_indices": [2]})
    QueueDriver(engine).run(job_id)
    page = api_listing.list_tasks(engine, job_id, stage="1")[1]
    assert [t["task_id"] for t in page["tasks"]] == [make_task_id(job_id, 1, i) for i in range(4)]
    failed = api_listing.list_tasks(engine, job_id, status="failed")[1]["tasks"]
    assert [t["task_id"] for t in failed] == [make_task_id(job_id, 1, 2)]
    assert "asked to fail" in failed[0]["error_details"]
    first, second = (api_listing.list_tasks(engine, job_id, limit="3", continuation=c)[1] for c in (None, None))
    assert first == second and first["continuation"]
    rest = api_listing.list_tasks(engine, job_id, limit="3", continuation=first["continuation"])[1]
    assert len(first["tasks"]) + len(rest["tasks"]) == 4
    task = api_listing.get_task(engine, job_id, make_task_id(job_id, 1, 0))[1]
    assert task["status"] == "completed" and task["attempts"] == 1 and task["duration_s"] >= 0
    assert task["result"] == {"greeting": f"hello from {make_task_id(job_id, 1, 0)}!"}
    with pytest.raises(NotFoundError):
        api_listing.get_task(engine, job_id, make_task_id("f" * 64, 1, 0))
    with pytest.raises(NotFoundError):
        api_listing.list_tasks(engine, "0" * 64)


def test_progress_and_stage_timings(engine):
    job_id = submit(engine, {"n": 4})
    assert api_jobs.status(engine, job_id)[1]["progress"] == 0.0
    engine.run_stage(StageMessage(job_id=job_id, stage=1))
    for m in list(engine.repos.tasks_queue.client.receive_messages(max_messages=2, visibility_timeout=1)):
        QueueDriver(engine)  # binds function_app to this engine
        import function_app
        from azure.functions.queue import QueueMessage
        function_app.process_task_message(QueueMessage(id=m.id, body=m.content.encode(), dequeue_count=1))
        engine.repos.tasks_queue.client.delete_message(m)
    mid = api_jobs.status(engine, job_id)[1]
    assert mid["progress"] == 25.0  # stage 1 half done, stage 2 not started: (0.5 + 0) / 2
    QueueDriver(engine).run(job_id)
    done = api_jobs.status(engine, job_id, verbose=True)[1]
    assert done["progress"] == 100.0
    for stage in done["stages"]:
        assert stage["started_at"] <= stage["ended_at"] and stage["duration_s"] >= 0
    assert len(done["task_page"]["tasks"]) == 8


def test_stuck_jobs_are_the_processing_ones_without_progress(engine):
    job_id = submit(engine, {"n": 2})
    engine.run_stage(StageMessage(job_id=job_id, stage=1))
    engine.repos.tasks_queue.client.clear_messages()  # nothing will progress
    time.sleep(1.2)
    stuck = api_listing.stuck_jobs(engine, "http://t", "1")[1]["jobs"]
    assert [j["job_id"] for j in stuck] == [job_id] and stuck[0]["idle_s"] >= 1
    assert api_listing.stuck_jobs(engine, "http://t", "3600")[1]["jobs"] == []
    with pytest.raises(BadRequestError):
        api_listing.stuck_jobs(engine, "http://t", "-1")


def test_job_types_describe_every_registered_type_with_json_schema():
    body = api_listing.job_types()[1]
    assert {t["job_type"] for t in body["job_types"]} == set(JOB_TYPES)
    hello = next(t for t in body["job_types"] if t["job_type"] == "hello_world")
    assert [s["name"] for s in hello["stages"]] == ["hello_worlds", "worlds_reply"]
    jsonschema.validate({"n": 5}, hello["parameters"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"n": 0}, hello["parameters"])
    large = next(t for t in body["job_types"] if t["job_type"] == "process_large_raster")
    assert [s["parallelism"] for s in large["stages"]][1] == "one task per tile"


def test_health_is_200_then_503_naming_storage_when_azurite_stops(tmp_path):
    storage = Azurite(location=tmp_path / "az").start()
    try:
        engine = Engine(Repositories(fresh_settings(storage.connection_string)).ensure())
        code, body = api_system.health(engine)
        assert code == 200 and body["status"] == "healthy"
        assert set(body["queues"]) == {engine.settings.jobs_queue, engine.settings.tasks_queue,
                                       f"{engine.settings.jobs_queue}-poison", f"{engine.settings.tasks_queue}-poison"}
        assert body["versions"]["azure-functions"]
        storage.stop()
        code, body = api_system.health(engine)
        assert code == 503 and {"tables", "queues", "blobs"} <= set(body["failing"])
        assert "unreachable" in body["checks"]["tables"]["error"] or body["checks"]["tables"]["error"]
    finally:
        storage.stop()


def test_metrics_report_jobs_and_task_durations(engine):
    ok = submit(engine, {"n": 3, "message": "metrics"})
    bad = submit(engine, {"n": 2, "fail_indices": [0], "message": "metrics"})
    QueueDriver(engine).run()
    code, body = api_system.metrics(engine)
    assert code == 200 and body["jobs"]["by_status"] == {"completed": 1, "failed": 1}
    greet = body["task_types"]["hello_greeting"]
    assert greet["count"] == 5 and greet["failed"] == 1 and greet["failure_rate"] == pytest.approx(0.2)
    assert greet["duration_s"]["p50"] is not None and greet["duration_s"]["p99"] >= greet["duration_s"]["p50"]
    assert body["task_types"]["hello_reply"]["count"] == 3
    assert ok != bad


def test_settings_defaulted_parameters_are_optional_in_the_schema():
    body = api_listing.job_types()[1]
    raster = next(t for t in body["job_types"] if t["job_type"] == "process_raster")["parameters"]
    assert raster["required"] == ["blob"]
    assert "COLLECTION" in raster["properties"]["collection_id"]["description"]
    jsonschema.validate({"blob": "a/b.tif"}, raster)


def test_query_and_body_edge_cases_found_by_fuzzing_are_400s(engine):
    """Each of these was a 500, a NaN in JSON, or silently coerced before schemathesis found it."""
    job_id = submit(engine, {"n": 1, "message": "edge"})
    cases = [lambda: api_system.metrics(engine, "abc"), lambda: api_system.metrics(engine, "nan"),
             lambda: api_system.metrics(engine, "1e300"), lambda: api_listing.stuck_jobs(engine, "http://t", "inf"),
             lambda: api_listing.stuck_jobs(engine, "http://t", "nan"),
             lambda: api_listing.flag("maybe", "verbose"), lambda: api_listing.limit_of("0"),
             lambda: api_jobs.submit(engine, "hello_world", b"[" * 100_000, "http://t"),
             lambda: api_jobs.submit(engine, "hello_world", b'{"n": "3"}', "http://t"),
             lambda: api_jobs.submit(engine, "hello_world", b'{"n": 3.0}', "http://t")]
    for case in cases:
        with pytest.raises(BadRequestError):
            case()
    assert api_listing.flag("true", "verbose") and not api_listing.flag(None, "verbose")
    assert api_jobs.status(engine, job_id)[0] == 200


def test_a_huge_integer_in_a_submit_body_is_a_400_naming_it(engine):
    for body in (b'{"n": ' + b"1" * 5000 + b"}", b'{"fail_indices": [-' + b"9" * 101 + b"]}"):
        code, answer = api_jobs.respond(lambda b=body: api_jobs.submit(engine, "hello_world", b, "http://t"))
        assert code == 400 and answer["error"] == "bad_request", answer
        assert "integer of" in answer["message"] and f"at most {api_jobs.MAX_INT_DIGITS}" in answer["message"]
    code, answer = api_jobs.respond(lambda: api_jobs.submit(engine, "hello_world", b'{"n": 1' + b"0" * 99 + b"}",
                                                            "http://t"))
    assert code == 400 and answer["error"] == "invalid_parameters"  # 100 digits parse; the range check speaks


def test_health_names_no_database_server_or_user(azurite, caplog):
    """Nothing listens on the database port: the pool gives up after its 10 s connect timeout."""
    from azurite_proc import free_port

    port = free_port()
    settings = fresh_settings(azurite.connection_string, pgstac_host="127.0.0.1", pgstac_port=port,
                              pgstac_user="geoadmin", pgstac_password="hunter2")
    engine = Engine(Repositories(settings).ensure())
    with caplog.at_level("WARNING", logger="api_system"):
        code, body = api_system.health(engine)
    assert code == 503 and body["failing"] == ["database"]
    assert body["checks"]["database"] == {"ok": False, "error": "database unreachable"}
    assert "geoadmin" not in json.dumps(body) and str(port) not in json.dumps(body)
    logged = [r.getMessage() for r in caplog.records if "health_database_failed" in r.getMessage()]
    assert logged and "pgstac unavailable" in logged[0] and "hunter2" not in logged[0]

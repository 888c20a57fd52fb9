"""noop: one stage of n empty tasks (the engine benchmark's job type)."""
from __future__ import annotations

import json

import api_jobs
from support import fresh_settings
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine


def test_noop_over_two_fanout_chunks_completes_with_its_count_and_each_index(azurite):
    engine = Engine(Repositories(fresh_settings(azurite.connection_string, fanout_chunk=100)).ensure())
    code, body = api_jobs.submit(engine, "noop", json.dumps({"n": 150}).encode(), "http://test")
    assert code == 202, body
    QueueDriver(engine).run(body["job_id"])
    _, status = api_jobs.status(engine, body["job_id"])
    assert status["status"] == "completed" and status["result_data"] == {"task_count": 150}
    assert status["tasks"]["completed"] == 150 and [s["name"] for s in status["stages"]] == ["noops"]
    tasks = engine.store.list_tasks(body["job_id"])
    assert sorted(t.result["i"] for t in tasks) == list(range(150))
    assert all(t.result == {"i": t.index} for t in tasks)


def test_noop_over_the_deployments_stage_limit_is_refused_at_submit(azurite):
    engine = Engine(Repositories(fresh_settings(azurite.connection_string, max_tasks_per_stage=1000)).ensure())
    code, body = api_jobs.respond(lambda: api_jobs.submit(engine, "noop", b'{"n": 1001}', "http://test"))
    assert code == 400 and "MAX_TASKS_PER_STAGE" in body["message"], body
    assert body["errors"][0]["field"] == "n"
    code, body = api_jobs.respond(lambda: api_jobs.submit(engine, "noop", b'{"n": 1000000}', "http://test"))
    assert code == 400 and body["errors"][0]["type"] == "less_than_equal", body

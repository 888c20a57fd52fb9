"""The task contract: every task type has a version (rows, status, job types, log lines), reports
throttled progress that shows in the task and in the job, and states its time limit."""
from __future__ import annotations

import json
import logging
import threading
import time

import api_jobs
import api_listing
from config import get_settings
from controller_factory import JOB_TYPES, TASK_HANDLERS
from models import Status, TaskMessage, decode_job_message, make_task_id
from queue_driver import QueueDriver
from support import submit


def test_every_task_type_declares_a_version_and_job_types_show_it_with_the_time_limit():
    assert all(isinstance(h.version, int) and h.version >= 1 for h in TASK_HANDLERS.values())
    _, body = api_listing.job_types()
    stages = [s for t in body["job_types"] for s in t["stages"]]
    assert len(stages) == sum(len(c.stages) for c in JOB_TYPES.values())
    for stage in stages:
        handler = TASK_HANDLERS[stage["task_type"]]
        assert stage["task_version"] == handler.version
        assert stage["time_limit_s"] == (handler.time_limit_s or get_settings().task_time_limit_s)


def test_rows_status_and_log_lines_carry_the_task_version(engine, caplog):
    job_id = submit(engine, {"n": 2})
    with caplog.at_level(logging.INFO):
        QueueDriver(engine).run(job_id)
    tasks = engine.store.list_tasks(job_id)
    assert tasks and all(t.task_version == TASK_HANDLERS[t.task_type].version for t in tasks)
    page = api_listing.list_tasks(engine, job_id)[1]
    assert all(t["task_version"] == 1 for t in page["tasks"])
    task_lines = [json.loads(r.getMessage()) for r in caplog.records
                  if r.name == "engine_tasks" and r.getMessage().startswith("{") and '"task_id"' in r.getMessage()]
    started = [line for line in task_lines if line["event"] in ("task_started", "task_ended")]
    assert len(started) == 8 and all(line["task_version"] == 1 and line["job_id"] == job_id for line in started)


def test_progress_is_throttled_and_shows_in_the_task_and_the_job(azurite):
    from support import fresh_settings
    from repositories import Repositories
    from task_manager import Engine

    engine = Engine(Repositories(fresh_settings(azurite.connection_string, progress_interval_s=0.5)).ensure())
    job_id = submit(engine, {"n": 1, "sleep_ms": 3000})
    (msg,) = list(engine.repos.jobs_queue.client.receive_messages())
    engine.repos.jobs_queue.client.delete_message(msg)
    engine.run_stage(decode_job_message(msg.content))  # fan out stage 1
    writes = []
    real = engine.store.commit_rows

    def counting(tasks, shards, stage):
        writes.append([t.progress for t in tasks])
        return real(tasks, shards, stage)

    engine.store.commit_rows = counting
    seen = []
    runner = threading.Thread(target=engine.run_task,
                              args=(TaskMessage(job_id=job_id, task_id=make_task_id(job_id, 1, 0)),))
    runner.start()
    while runner.is_alive():
        _, status = api_jobs.status(engine, job_id)
        task = engine.store.get_task(job_id, 1, 0)
        seen.append((task.progress, status["progress"], status["stages"][0]["tasks"]["processing"]))
        time.sleep(0.2)
    runner.join()
    moving = [(p, job) for p, job, _ in seen if p is not None and 0 < p < 100]
    assert len({p for p, _ in moving}) >= 2, f"task progress never moved: {seen}"
    assert all(0 < job < 50 for _, job in moving), "stage 1 of 2 running: the job is between 0 and 50 %"
    progress_writes = [w for w in writes if w and w[0] not in (None, 100)]
    assert 2 <= len(progress_writes) <= 3000 / 500 + 1, "one write per interval at most (12 reports were made)"
    done = engine.store.get_task(job_id, 1, 0)
    assert done.status == Status.COMPLETED and done.progress == 100
    assert api_jobs.status(engine, job_id)[1]["stages"][0]["progress"] == 100.0

"""Issue 20, sizes: every text that goes into a row is bounded where it is made (in Azure's UTF-16
measure, head and tail kept, the whole text in a blob linked from the task), so no task's text can stop
a job from ending. Each case runs the real engine paths against Azurite."""
from __future__ import annotations

import json
import time

import pytest

import api_jobs
import api_listing
import engine_recovery
import repository_faults
from conftest import fresh_settings
from controller_factory import TASK_HANDLERS
from engine_counters import Change
from engine_group_commit import TaskWrite
from errors import EntityTooLargeError, TaskError, TransientError
from models import TEXT_BUDGET, Status, bound_text, decode_job_message, decode_task_message, is_cut, utf16_len
from base_controller import TaskHandler
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine
from test_group_commit import together


# ---------------------------------------------------------------- the bounding helper (pure)
def test_bound_text_keeps_short_texts_and_none_as_they_are():
    assert bound_text(None) is None
    assert bound_text("") == ""
    text = "x" * TEXT_BUDGET
    assert bound_text(text) is text


def test_bound_text_keeps_head_and_tail_within_the_budget_in_utf16_units():
    text = "HEAD " + "mid " * 30_000 + " TAIL"
    out = bound_text(text, 1000)
    assert utf16_len(out) <= 1000 and out.startswith("HEAD mid") and out.endswith("mid  TAIL")
    assert is_cut(out) and not is_cut(text)
    assert "characters cut" in out


def test_bound_text_counts_astral_characters_as_two_units_and_never_splits_them():
    fits_by_python = "🌍" * 600  # 600 code points, 1,200 UTF-16 units
    out = bound_text(fits_by_python, 1001)
    assert out != fits_by_python and utf16_len(out) <= 1001
    for budget in (1000, 1001, 1002, 1003):  # every parity of head and tail
        out = bound_text("a" + "🌍" * 5000, budget)
        assert utf16_len(out) <= budget
        out.encode("utf-8")  # a lone surrogate (a split pair) would raise here
        assert set(out.rsplit("\n", 1)[1]) == {"🌍"}
    assert bound_text("🌍" * 500, 1000) == "🌍" * 500  # exactly 1,000 units: fits


def test_bound_text_is_idempotent():
    text = "é" * 3 + "雨" * 50_000 + "end"
    once = bound_text(text)
    assert bound_text(once) == once and utf16_len(once) <= TEXT_BUDGET


def test_bound_text_with_a_budget_smaller_than_its_marker_keeps_the_head():
    assert bound_text("abcdefghij" * 10, 8) == "abcdefgh"


# ---------------------------------------------------------------- engines over Azurite
@pytest.fixture
def faults():
    """A transport fault injector for the clients built in this test (delays scripted with ``arm``)."""
    injector = repository_faults.TransportFaults(repository_faults.FaultSpec(seed="1", delay_s=1.0))
    repository_faults.install(injector)
    try:
        yield injector
    finally:
        repository_faults.install(None)


def make_engine(azurite, max_attempts: int | None = None, **overrides) -> Engine:
    settings = fresh_settings(azurite.connection_string, **{"retry_base_delay_s": 0, "sweeper_grace_s": 0,
                                                             **overrides})
    return Engine(Repositories(settings).ensure(), max_attempts=max_attempts)


def submit(engine: Engine, params: dict) -> str:
    code, body = api_jobs.submit(engine, "hello_world", json.dumps(params).encode(), "http://t")
    assert code == 202, body
    return body["job_id"]


def take(queue) -> list:
    taken = list(queue.client.receive_messages(max_messages=32, messages_per_page=32))
    for m in taken:
        queue.client.delete_message(m)
    return taken


def replace_greeting(monkeypatch, run) -> None:
    real = TASK_HANDLERS["hello_greeting"]
    monkeypatch.setitem(TASK_HANDLERS, "hello_greeting", TaskHandler("hello_greeting", real.parameters_model, run))


def whole(engine: Engine, job_id: str, task_id: str) -> dict:
    """The task as GET /api/jobs/{job_id}/tasks/{task_id}?full=true shows it."""
    code, body = api_listing.get_task(engine, job_id, task_id, full="true")
    assert code == 200, body
    return body


def long_error(units: int) -> str:
    """A GDAL-like error text of about ``units`` UTF-16 units, with an emoji at each end."""
    line = "ERROR 1: /vsiaz/in/scene.tif: TIFFReadEncodedTile() failed for block 12 of band 3. "
    text = "🛰 GDAL said: " + line * (units // len(line) + 1)
    return text[:units - 20] + " the real cause 🌍"


# ---------------------------------------------------------------- case 1
def test_case01_one_long_error_does_not_fail_the_other_ends_of_its_group_commit(azurite, faults, monkeypatch):
    """A task's 70,000-character error shares a transaction with two other tasks' ends: every end commits
    (before: the batch was refused whole, the two good ends raised EntityTooLargeError and waited out their
    leases, the long-error task later ended as a timeout with its real error lost)."""
    engine = make_engine(azurite, task_time_limit_s=30)
    job_id = submit(engine, {"n": 4})
    engine.run_stage(decode_job_message(take(engine.repos.jobs_queue)[0].content))
    messages = [decode_task_message(m.content) for m in take(engine.repos.tasks_queue)]
    error = long_error(70_000)

    def greet(p, ctx):
        if ctx.index == 0:  # ends first; its commit is slow, so the other three ends queue behind it
            time.sleep(0.2)
            faults.arm("delay", method="POST", match="$batch", times=1)
            return {"greeting": "first"}
        time.sleep(0.5)
        if ctx.index == 1:
            raise TaskError(error)
        return {"greeting": f"hello {ctx.index}"}

    replace_greeting(monkeypatch, greet)
    commits = []
    real_commit = engine.store.commit_rows

    def commit_rows(tasks, shards, stage):
        commits.append(sorted(t.index for t in tasks if t.status in (Status.COMPLETED, Status.FAILED)))
        return real_commit(tasks, shards, stage)

    monkeypatch.setattr(engine.store, "commit_rows", commit_rows)
    outcomes = together(lambda m: engine.run_task(m), messages)
    assert [1, 2, 3] in commits, f"the ends did not share a transaction: {commits}"
    assert [o for o in outcomes if isinstance(o, Exception)] == []
    rows = engine.store.list_tasks(job_id, 1)
    assert [r.status for r in rows] == [Status.COMPLETED, Status.FAILED, Status.COMPLETED, Status.COMPLETED]
    failed = rows[1]
    assert failed.error_code == "task_failed" and is_cut(failed.error_details)
    assert utf16_len(failed.error_details) <= TEXT_BUDGET
    assert failed.error_details.startswith(error[:200]) and failed.error_details.endswith(error[-200:])
    shown = whole(engine, job_id, failed.task_id)
    assert shown["error_details"] == error and shown["cut"] is None
    assert api_listing.get_task(engine, job_id, failed.task_id)[1]["cut"] == ["error_details"]
    QueueDriver(engine).run(job_id)
    job = engine.store.get_job(job_id)
    assert job.status == Status.FAILED and failed.task_id in job.error_details


# ---------------------------------------------------------------- case 2
def test_case02_a_task_whose_last_error_nearly_fills_a_property_still_gives_up(azurite, monkeypatch):
    """A transient error of 32,750 characters fits ``last_error``; the poison path's "gave up after N attempts:
    " prefix made it too long (before: the poison message was put back for ever and the job never ended)."""
    monkeypatch.setattr(engine_recovery, "POISON_RETRY_DELAY_S", 0)
    engine = make_engine(azurite, max_attempts=2)
    error = ("read timed out on block 12; " * 1300)[:32_750]

    def greet(p, ctx):
        raise TransientError(error)

    replace_greeting(monkeypatch, greet)
    job_id = submit(engine, {"n": 2})
    QueueDriver(engine).run(job_id, timeout=30)
    job = engine.store.get_job(job_id)
    assert job.status == Status.FAILED
    task = engine.store.get_task(job_id, 1, 0)
    assert task.status == Status.FAILED and task.error_details.startswith("gave up after 2 attempts: read timed out")
    assert utf16_len(task.error_details) <= TEXT_BUDGET and utf16_len(task.last_error) <= TEXT_BUDGET
    assert whole(engine, job_id, task.task_id)["last_error"] == error


# ---------------------------------------------------------------- case 3
def test_case03_a_failure_summary_of_twenty_long_errors_still_fails_the_job_with_them(azurite, monkeypatch):
    """20 tasks fail with 1,700-character errors: the job's summary names each of them (before: the summary
    was over 64 KiB, every completion failed and the job said only "the complete message kept failing")."""
    engine = make_engine(azurite)

    def greet(p, ctx):
        raise TaskError(f"task {ctx.index}: " + "no data in band; " * 100)  # about 1,700 characters

    replace_greeting(monkeypatch, greet)
    job_id = submit(engine, {"n": 20})
    QueueDriver(engine).run(job_id, timeout=60)
    job = engine.store.get_job(job_id)
    assert job.status == Status.FAILED
    assert "kept failing" not in job.error_details, job.error_details[:300]
    assert job.error_details.startswith("stage 1 (hello_worlds) failed: 20 of 20 tasks failed")
    assert utf16_len(job.error_details) <= TEXT_BUDGET
    for task in engine.store.list_tasks(job_id, 1):
        assert f"{task.task_id}: task {task.index}: no data in band" in job.error_details


# ---------------------------------------------------------------- a write that still cannot be stored
def test_a_row_the_store_refuses_fails_only_its_own_caller_in_a_group_commit(azurite):
    """A field no budget covers (here a task type over 64 KiB) fails that caller's write; the other writes of
    the same transaction commit."""
    engine = make_engine(azurite)
    job_id = submit(engine, {"n": 6})
    engine.run_stage(decode_job_message(take(engine.repos.jobs_queue)[0].content))
    tasks = engine.store.list_tasks(job_id, 1)

    def claim(task):
        update = {"status": Status.PROCESSING, "attempts": 1}
        if task.index == 2:
            update["task_type"] = "t" * 40_000
        row = task.model_copy(update=update)
        return engine.commits.write(job_id, TaskWrite("claim", row, Change(task.shard, started=1)))

    results = together(claim, tasks)
    assert isinstance(results[2], EntityTooLargeError), results[2]
    assert all(isinstance(r, TaskWrite) for i, r in enumerate(results) if i != 2), results
    rows = engine.store.list_tasks(job_id, 1)
    assert [r.status for r in rows].count(Status.PROCESSING) == 5 and rows[2].status == Status.QUEUED
    _, shards = engine.store.stage_counters(job_id, 1)
    assert sum(s.started for s in shards.values()) == 5


def test_redacting_a_long_error_takes_linear_time():
    """Every error is redacted whole before it is stored: a 70,000-letter word took over a minute (quadratic)."""
    from logs import redact

    started = time.perf_counter()
    assert redact("x" * 70_000 + " https://user:secret@host/") == "x" * 70_000 + " https://user:***@host/"
    assert time.perf_counter() - started < 2

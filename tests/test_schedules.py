"""Schedules: the NCRONTAB parser and evaluator, due slots, exactly once across instances, the
latest-only policy over a simulated restart, and the 400s a bad schedule gets when it is created.

Storage is a real (private) Azurite; the clock is injected (``now=``) where the test needs time to pass.
"""
from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

import api_jobs
import api_triggers
import controller_triggers
from errors import TransientError
from models import ScheduleRecord, make_job_id
from repositories import Repositories
from services_ncrontab import Cron, CronError
from task_manager import Engine

T0 = datetime(2031, 3, 3, 10, 0, 30, tzinfo=UTC)  # a Monday, 30 s past 10:00


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# ------------------------------------------------------------------ parser
@pytest.mark.parametrize("expression, field, values", [
    ("0 */15 * * * *", "minutes", (0, 15, 30, 45)),
    ("0 5-20/5 * * * *", "minutes", (5, 10, 15, 20)),
    ("0 50/4 * * * *", "minutes", (50, 54, 58)),
    ("0 1,3,5-7 * * * *", "minutes", (1, 3, 5, 6, 7)),
    ("0 0 9-17 * * *", "hours", tuple(range(9, 18))),
    ("0 0 0 1,15 * *", "days", (1, 15)),
    ("0 0 0 * JAN,mar-May *", "months", (1, 3, 4, 5)),
    ("0 0 0 * */6 *", "months", (1, 7)),
    ("0 0 0 * * MON-FRI", "weekdays", (1, 2, 3, 4, 5)),
    ("0 0 0 * * sun,sat", "weekdays", (0, 6)),
    ("*/20 * * * * *", "seconds", (0, 20, 40)),
])
def test_fields_parse_ranges_steps_lists_and_names(expression, field, values):
    assert getattr(Cron.parse(expression), field) == values


@pytest.mark.parametrize("expression, says", [
    ("0 * * * *", "6 fields"),
    ("0 0 * * * * *", "6 fields"),
    ("0 60 * * * *", "minute field: 60 is out of range 0-59"),
    ("0 0 24 * * *", "hour field: 24 is out of range"),
    ("0 0 0 0 * *", "day field: 0 is out of range 1-31"),
    ("0 0 0 * 13 *", "month field: 13"),
    ("0 0 0 * * 7", "day-of-week field: 7"),
    ("0 */0 * * * *", "step '0' must be a whole number of at least 1"),
    ("0 20-10 * * * *", "runs backwards"),
    ("0 0 0 * foo *", "'foo' is not a number or a name"),
    ("0 1,,2 * * * *", "empty or incomplete"),
    ("0 5/ * * * *", "empty or incomplete"),
])
def test_bad_expressions_name_the_field_and_the_problem(expression, says):
    with pytest.raises(CronError, match=says.replace("(", r"\(").replace("*", r"\*")):
        Cron.parse(expression)


# ------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("expression, after, expected", [
    ("0 */5 * * * *", "2031-03-03T10:03:07", "2031-03-03T10:05:00"),
    ("0 */5 * * * *", "2031-03-03T10:05:00", "2031-03-03T10:10:00"),  # strictly after
    ("0 0 0 * * *", "2031-12-31T23:59:59", "2032-01-01T00:00:00"),  # year boundary
    ("0 30 9 * * MON-FRI", "2031-03-07T10:00:00", "2031-03-10T09:30:00"),  # Friday after 09:30 -> Monday
    ("0 0 0 31 * *", "2031-04-01T00:00:00", "2031-05-31T00:00:00"),  # April has no 31st
    ("0 0 12 29 FEB *", "2031-03-01T00:00:00", "2032-02-29T12:00:00"),  # leap day
    ("0 0 0 13 * FRI", "2031-01-01T00:00:00", "2031-06-13T00:00:00"),  # day AND day of week (NCrontab)
    ("15 * * * * *", "2031-03-03T10:00:15", "2031-03-03T10:01:15"),
])
def test_next_occurrence(expression, after, expected):
    cron = Cron.parse(expression)
    found = cron.next_after(at(after))
    assert found == at(expected)
    assert cron.matches(found)


@pytest.mark.parametrize("expression, now, expected", [
    ("0 */5 * * * *", "2031-03-03T10:03:07", "2031-03-03T10:00:00"),
    ("0 */5 * * * *", "2031-03-03T10:05:00", "2031-03-03T10:05:00"),  # at or before
    ("0 0 0 1 * *", "2031-03-01T00:00:00", "2031-03-01T00:00:00"),
    ("0 30 9 * * MON-FRI", "2031-03-09T12:00:00", "2031-03-07T09:30:00"),  # Sunday -> last Friday
    ("0 0 0 29 2 *", "2031-03-01T00:00:00", "2028-02-29T00:00:00"),
])
def test_latest_occurrence(expression, now, expected):
    assert Cron.parse(expression).latest_at_or_before(at(now)) == at(expected)


def test_an_impossible_date_never_fires():
    assert Cron.parse("0 0 0 31 2 *").next_after(T0) is None
    assert Cron.parse("0 0 0 30 FEB *").latest_at_or_before(T0) is None


# ------------------------------------------------------------------ due slots (pure)
def schedule(expression: str, created: datetime, last: datetime | None = None) -> ScheduleRecord:
    return ScheduleRecord(schedule_id="0" * 16, job_type="hello_world", parameters={}, expression=expression,
                          created_at=created, last_slot=last)


@pytest.mark.parametrize("created, last, now, slot, skipped", [
    (T0, None, T0 + timedelta(minutes=4), None, 0),  # the first slot (10:05) is not due yet
    (T0, None, T0 + timedelta(minutes=5), at("2031-03-03T10:05:00"), 0),
    (T0, at("2031-03-03T10:05:00"), T0 + timedelta(minutes=6), None, 0),  # already claimed
    (T0, at("2031-03-03T10:05:00"), T0 + timedelta(minutes=47), at("2031-03-03T10:45:00"), 7),  # downtime
    (T0, None, T0 + timedelta(hours=2), at("2031-03-03T12:00:00"), 23),  # never ran: latest only
])
def test_due_slot_is_the_latest_after_the_last_one(created, last, now, slot, skipped):
    assert controller_triggers.due_slot(schedule("0 */5 * * * *", created, last), now) == (slot, skipped)


def test_a_slot_before_the_schedule_existed_is_never_due():
    row = schedule("0 0 10 * * *", created=T0)  # created 30 s after today's 10:00 slot
    assert controller_triggers.due_slot(row, T0 + timedelta(hours=1)) == (None, 0)
    assert controller_triggers.due_slot(row, T0 + timedelta(days=1))[0] == at("2031-03-04T10:00:00")


# ------------------------------------------------------------------ the API: created once, refused with 400s
def call(fn, *args):
    return api_jobs.respond(lambda: fn(*args))


def post(engine: Engine, body: dict) -> tuple[int, dict]:
    return call(api_triggers.create_schedule, engine, json.dumps(body).encode())


def test_create_list_get_delete(engine):
    body = {"job_type": "hello_world", "parameters": {"n": 2}, "expression": "0 0 */6 * * *", "name": "demo"}
    code, created = post(engine, body)
    assert code == 201, created
    assert created["parameters"] == {"n": 2, "message": "hello", "fail_indices": [], "sleep_ms": 0,
                                     "transient_failures": 0}  # validated, defaults applied
    assert created["next_slot"] and created["skipped_slots"] == 0
    again_code, again = post(engine, {**body, "parameters": {"n": 2, "message": "hello"}})  # same definition
    assert (again_code, again["schedule_id"]) == (200, created["schedule_id"])
    assert [s["schedule_id"] for s in call(api_triggers.list_schedules, engine)[1]["schedules"]] == \
        [created["schedule_id"]]
    assert call(api_triggers.get_schedule, engine, created["schedule_id"])[0] == 200
    assert call(api_triggers.delete_schedule, engine, created["schedule_id"]) == \
        (200, {"deleted": created["schedule_id"]})
    assert call(api_triggers.get_schedule, engine, created["schedule_id"])[0] == 404
    assert call(api_triggers.delete_schedule, engine, created["schedule_id"])[0] == 404
    assert call(api_triggers.get_schedule, engine, "not/an/id")[0] == 404


@pytest.mark.parametrize("body, field, says", [
    ({"job_type": "hello_world", "expression": "0 */5 * * *"}, "expression", "6 fields"),
    ({"job_type": "hello_world", "expression": "0 99 * * * *"}, "expression", "minute field: 99 is out of range"),
    ({"job_type": "hello_world", "expression": "*/10 * * * * *"}, "expression", "at most once a minute"),
    ({"job_type": "hello_world", "expression": "0 0 0 31 2 *"}, "expression", "never fires"),
    ({"job_type": "no_such_type", "expression": "0 0 * * * *"}, "job_type", "unknown job type 'no_such_type'"),
    ({"job_type": "hello_world", "parameters": {"n": 0}, "expression": "0 0 * * * *"}, "n", "greater than or equal"),
    ({"job_type": "hello_world", "parameters": {"colour": 1}, "expression": "0 0 * * * *"}, "colour", "Extra"),
    ({"job_type": "hello_world", "parameters": {"scheduled_for": "2031-01-01T00:00:00Z"},
      "expression": "0 0 * * * *"}, "parameters.scheduled_for", "set by the schedule"),
    ({"job_type": "validate_raster", "parameters": {}, "expression": "0 0 * * * *"}, "blob", "Field required"),
    ({"job_type": "hello_world", "expression": "0 0 * * * *", "cron": "x"}, "cron", "Extra"),
    ({"expression": "0 0 * * * *"}, "job_type", "Field required"),
])
def test_bad_schedules_are_400s_naming_the_problem(engine, body, field, says):
    code, answer = post(engine, body)
    assert code == 400, answer
    assert says in answer["message"]
    assert field in [e["field"] for e in answer["errors"]], answer
    if field == "job_type" and "unknown" in says:
        assert "hello_world" in answer["available"]
    assert call(api_triggers.list_schedules, engine)[1]["schedules"] == []


# ------------------------------------------------------------------ exactly once, whatever the instances
def jobs_of(engine: Engine) -> list[dict]:
    rows, _ = engine.store.list_jobs(None, "hello_world", 1000, None)
    return [engine.store.get_job(r["job_id"]) for r in rows]


def make(engine: Engine, expression: str, now: datetime) -> ScheduleRecord:
    row, created = engine.triggers.create_schedule("hello_world", {"n": 1}, expression, now=now)
    assert created
    return row


def test_each_slot_runs_once_across_concurrent_instances(settings):
    """Eight instances (own engines, own clients) tick at the same moments, for three slots."""
    engines = [Engine(Repositories(settings).ensure()) for _ in range(8)]
    row = make(engines[0], "0 * * * * *", T0)
    outcomes = []
    for minute in (1, 2, 3):
        now = T0 + timedelta(minutes=minute, seconds=1)
        start = threading.Barrier(len(engines))

        def tick(engine: Engine) -> None:
            start.wait()
            outcomes.extend(engine.triggers.run_due(now=now))

        threads = [threading.Thread(target=tick, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    jobs = jobs_of(engines[0])
    slots = sorted(j.parameters["scheduled_for"] for j in jobs)
    assert slots == ["2031-03-03T10:01:00Z", "2031-03-03T10:02:00Z", "2031-03-03T10:03:00Z"]
    assert sum(1 for o in outcomes if o.get("created")) == 3
    for job in jobs:  # the slot is part of the identity
        assert job.job_id == make_job_id("hello_world", job.parameters)
    final = engines[0].triggers.get_schedule(row.schedule_id)
    assert final.last_slot == at("2031-03-03T10:03:00") and final.last_job_id in {j.job_id for j in jobs}


def test_a_claim_whose_submit_failed_is_submitted_by_the_next_tick(engine, monkeypatch):
    row = make(engine, "0 */5 * * * *", T0)
    real = engine.submit
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise TransientError("storage answered 503 (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "submit", flaky)
    now = T0 + timedelta(minutes=5)
    assert engine.triggers.run_due(now=now) == []  # claimed, submit failed
    claimed = engine.triggers.get_schedule(row.schedule_id)
    assert claimed.last_slot == at("2031-03-03T10:05:00") and claimed.last_job_id is None
    (outcome,) = engine.triggers.run_due(now=now + timedelta(seconds=60))
    assert outcome["slot"] == "2031-03-03T10:05:00+00:00" and outcome["created"]
    assert len(jobs_of(engine)) == 1


def test_downtime_runs_only_the_latest_missed_slot_over_a_restart(settings):
    """Every 5 minutes; one tick at 10:05, then the app is down until 10:47 and restarts (a new engine:
    nothing kept in memory). Only 10:45 runs; 10:10..10:40 are skipped and counted."""
    first = Engine(Repositories(settings).ensure())
    row = make(first, "0 */5 * * * *", T0)
    (slot1,) = first.triggers.run_due(now=at("2031-03-03T10:05:00.2"))
    assert slot1["slot"] == "2031-03-03T10:05:00+00:00"
    del first  # down from here

    restarted = Engine(Repositories(settings).ensure())
    (late,) = restarted.triggers.run_due(now=at("2031-03-03T10:47:10"))
    assert late["slot"] == "2031-03-03T10:45:00+00:00" and late["created"]
    assert restarted.triggers.run_due(now=at("2031-03-03T10:49:00")) == []  # nothing new is due
    after = restarted.triggers.get_schedule(row.schedule_id)
    assert after.skipped_slots == 7 and after.last_slot == at("2031-03-03T10:45:00")
    (on_time,) = restarted.triggers.run_due(now=at("2031-03-03T10:50:00.5"))
    assert on_time["slot"] == "2031-03-03T10:50:00+00:00"
    assert sorted(j.parameters["scheduled_for"] for j in jobs_of(restarted)) == [
        "2031-03-03T10:05:00Z", "2031-03-03T10:45:00Z", "2031-03-03T10:50:00Z"]


def test_a_slot_refused_later_is_recorded_not_retried(engine):
    """A settings change can make stored parameters invalid: the slot records the error, and is not retried."""
    row = make(engine, "0 */5 * * * *", T0)
    stored = engine.triggers.get_schedule(row.schedule_id)
    engine.repos.triggers.replace(stored.model_copy(update={"parameters": {"n": 0}}))
    (refused,) = engine.triggers.run_due(now=T0 + timedelta(minutes=5))
    assert "n:" in refused["error"]
    assert engine.triggers.get_schedule(row.schedule_id).last_error == refused["error"]
    assert engine.triggers.run_due(now=T0 + timedelta(minutes=6)) == []  # not retried


def test_the_timer_function_submits_due_slots(engine, monkeypatch):
    """function_app.run_schedules (what the Functions host calls every minute) over this test's storage."""
    import function_app

    monkeypatch.setattr(function_app, "_engine", engine)
    make(engine, "0 * * * * *", datetime.now(UTC) - timedelta(minutes=3))
    function_app.run_schedules(None)
    function_app.run_schedules(None)  # a second tick in the same minute starts nothing
    (job,) = jobs_of(engine)
    assert job.parameters["scheduled_for"].endswith(":00Z")


# ------------------------------------------------------------------ the CLI, against a real local host
def test_cli_adds_lists_and_deletes_schedules_and_watches(azurite, tmp_path):
    import os
    import subprocess
    import sys
    import uuid

    from support import fresh_settings, settings_env
    from host_proc import HostProcess

    container = f"in-{uuid.uuid4().hex[:8]}"
    settings = fresh_settings(azurite.connection_string, input_container=container)
    Repositories(settings).ensure()
    host = HostProcess({**settings_env(settings), "INPUT_CONTAINER": container}, tmp_path / "host.log").start()

    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("GEOETL_URL", "GEOETL_KEY")}
        return subprocess.run([sys.executable, "cli.py", "--url", host.url, *args], capture_output=True, text=True,
                              timeout=60, env={**env, "NO_COLOR": "1"}, cwd=str(api_jobs.__file__).rsplit("/", 1)[0])

    try:
        added = cli("--json", "schedules", "add", "hello_world", "0 30 2 * * *", "n=2", "--name", "nightly")
        assert added.returncode == 0, added.stderr
        schedule_id = json.loads(added.stdout)["schedule_id"]
        listed = cli("schedules", "list")
        assert schedule_id in listed.stdout and "0 30 2 * * *" in listed.stdout and "nightly" in listed.stdout
        bad = cli("schedules", "add", "hello_world", "0 30 2 * *")
        assert bad.returncode == 2 and "6 fields" in bad.stderr
        assert cli("schedules", "delete", schedule_id).stdout.strip() == f"deleted {schedule_id}"
        assert cli("schedules", "list").stdout.strip() == "no schedules"

        watched = cli("watches", "add", container, "process_raster", "cog_profile=zstd", "--prefix", "drop/")
        assert watched.returncode == 0, watched.stderr
        assert f"{container}/drop/" in watched.stdout and "zstd" in watched.stdout
        refused = cli("watches", "add", container, "hello_world")
        assert refused.returncode == 2 and "a watch cannot start it" in refused.stderr
        watch_id = json.loads(cli("--json", "watches", "list").stdout)["watches"][0]["watch_id"]
        assert cli("watches", "delete", watch_id).returncode == 0
        assert cli("watches", "delete", watch_id).returncode == 2
    finally:
        host.stop()

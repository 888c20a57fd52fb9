"""Issue 20 case 11: schedule expressions take ASCII digits only, and every parse error is a 400 naming the field.

``str.isdigit()`` is true for superscripts (``²``), which ``int()`` refuses (the HTTP function answered 500), and
for Arabic-Indic or full-width digits, which ``int()`` reads (the schedule was stored as given, though NCRONTAB
in the Functions host cannot read it). The same pattern was in ``local_host_timers`` (the development host's
timer schedules), and ``\\d`` in its TimeSpan pattern matched any Unicode digit.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest

import function_app
from local_host_timers import CronSchedule, parse_timespan
from models import ScheduleRecord

NOT_ASCII = {
    "superscript_minute": "0 \u00b2 * * * *",  # ² : isdigit() True, int() raises
    "superscript_step": "0 */\u00b2 * * * *",
    "superscript_in_a_range": "0 1-\u00b3 * * * *",
    "arabic_indic_minute": "0 \u0663 * * * *",  # ٣ : isdigit() True, int() reads 3
    "fullwidth_hour": "0 0 \uff11\uff12 * * *",  # １２
    "devanagari_day": "0 0 0 \u0967 * *",  # १
    "fullwidth_month_name": "0 0 0 * \uff2a\uff21\uff2e *",  # ＪＡＮ
    "no_break_space_between_fields": "0\u00a00 * * * *",
}


def create_schedule(body: dict) -> tuple[int, dict]:
    req = func.HttpRequest("POST", "http://localhost/api/schedules", body=json.dumps(body).encode())
    response = function_app.create_schedule(req)
    return response.status_code, json.loads(response.get_body())



@pytest.mark.parametrize("kind", list(NOT_ASCII))
def test_an_expression_with_a_non_ascii_digit_is_a_400_naming_the_field_and_is_not_stored(http_engine, kind):
    code, answer = create_schedule({"job_type": "hello_world", "expression": NOT_ASCII[kind]})
    assert code == 400, answer
    assert [e["field"] for e in answer["errors"]] == ["expression"], answer
    assert "ASCII" in answer["message"], answer
    assert http_engine.triggers.list_schedules() == []


def test_ascii_expressions_are_still_created(http_engine):
    code, answer = create_schedule({"job_type": "hello_world", "expression": "0 5-20/5 9-17 * JAN,mar-May MON-FRI"})
    assert code == 201, answer


def test_a_stored_expression_that_no_longer_parses_stops_no_other_schedule(http_engine):
    """A schedule stored before the check (Arabic-Indic digits) is logged and skipped; the others still run."""
    engine = http_engine
    code, good = create_schedule({"job_type": "hello_world", "expression": "0 * * * * *"})
    assert code == 201, good
    old = ScheduleRecord(schedule_id="stored-before-the-fix", job_type="hello_world", parameters={"n": 1},
                         expression="0 \u0663 * * * *", created_at=datetime(2020, 1, 1, tzinfo=UTC))
    engine.repos.triggers.create(old)
    done = engine.triggers.run_due(now=datetime.now(UTC) + timedelta(minutes=2))
    assert [d["schedule_id"] for d in done] == [good["schedule_id"]], done
    listed = function_app.list_schedules(func.HttpRequest("GET", "http://localhost/api/schedules", body=b""))
    assert listed.status_code == 200, listed.get_body()
    views = {v["schedule_id"]: v for v in json.loads(listed.get_body())["schedules"]}
    assert views["stored-before-the-fix"]["next_slot"] is None and views[good["schedule_id"]]["next_slot"]


@pytest.mark.parametrize("expression", list(NOT_ASCII.values()))
def test_the_local_hosts_timer_schedules_take_ascii_digits_only(expression):
    with pytest.raises(ValueError, match="ASCII"):
        CronSchedule(expression)


@pytest.mark.parametrize("text", ["\u0660\u0660:\u0660\u0665:\u0660\u0660", "00:\uff10\uff15:00"])
def test_a_timespan_takes_ascii_digits_only(text):
    with pytest.raises(ValueError, match="TimeSpan"):
        parse_timespan(text)
    assert parse_timespan("00:05:00") == 300

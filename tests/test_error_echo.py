"""Issue 20 case 12: an error message quotes at most a bounded part of what the caller sent.

An invalid ``limit`` came back whole in the 400 (``limit must be a whole number, got '<all of it>'``), and so did
every other query parameter, route id, unknown key and bad value that an error names. Each is driven here through
the HTTP function with a value of 100,000 characters: the answer still names the parameter, says how long the
value was, and is a few hundred characters, not the value.
"""
from __future__ import annotations

import json

import azure.functions as func
import pytest

import function_app

HUGE = "7" * 50_000 + "x" * 50_000  # not a number, not an id, not a name
BOUND = 2_000  # characters of a whole error body



def call(fn, method: str, route: str, params: dict | None = None, route_params: dict | None = None,
         body: dict | None = None) -> tuple[int, str]:
    req = func.HttpRequest(method, f"http://localhost/api/{route}", params=params or {},
                           route_params=route_params or {}, body=json.dumps(body).encode() if body is not None else b"")
    response = fn(req)
    return response.status_code, response.get_body().decode()


def cases(job_id: str) -> dict[str, tuple]:
    """name -> (function, method, route, query, route params, body, what the message must still name)."""
    return {
        "list_jobs_limit": (function_app.list_jobs, "GET", "jobs", {"limit": HUGE}, None, None, "limit"),
        "list_jobs_status": (function_app.list_jobs, "GET", "jobs", {"status": HUGE}, None, None, "status"),
        "list_jobs_job_type": (function_app.list_jobs, "GET", "jobs", {"job_type": HUGE}, None, None, "job_type"),
        "job_status_verbose": (function_app.job_status, "GET", "jobs/status/x", {"verbose": HUGE},
                               {"job_id": job_id}, None, "verbose"),
        "job_status_limit": (function_app.job_status, "GET", "jobs/status/x", {"verbose": "true", "limit": HUGE},
                             {"job_id": job_id}, None, "limit"),
        "job_status_id": (function_app.job_status, "GET", "jobs/status/x", None, {"job_id": HUGE}, None, "job"),
        "list_tasks_stage": (function_app.list_tasks, "GET", "jobs/x/tasks", {"stage": HUGE}, {"job_id": job_id},
                             None, "stage"),
        "get_task_id": (function_app.get_task, "GET", "jobs/x/tasks/y", None,
                        {"job_id": job_id, "task_id": HUGE}, None, "task"),
        "stuck_older_than": (function_app.stuck_jobs, "GET", "jobs/stuck", {"older_than_s": HUGE}, None, None,
                             "older_than_s"),
        "metrics_window": (function_app.metrics, "GET", "metrics", {"window_s": HUGE}, None, None, "window_s"),
        "submit_unknown_type": (function_app.submit_job, "POST", "jobs/submit/x", None, {"job_type": HUGE}, {},
                                "job type"),
        "submit_unknown_key": (function_app.submit_job, "POST", "jobs/submit/hello_world", None,
                               {"job_type": "hello_world"}, {HUGE: 1}, "Extra inputs"),
        "submit_many_unknown_keys": (function_app.submit_job, "POST", "jobs/submit/hello_world", None,
                                     {"job_type": "hello_world"}, {f"k{i}": 1 for i in range(5_000)}, "more"),
        "submit_bad_blob_name": (function_app.submit_job, "POST", "jobs/submit/validate_raster", None,
                                 {"job_type": "validate_raster"}, {"blob": "/" + HUGE[:1000]}, "blob"),
        "schedule_id": (function_app.get_schedule, "GET", "schedules/x", None, {"schedule_id": HUGE}, None,
                        "schedule"),
        "watch_id": (function_app.get_watch, "GET", "watches/x", None, {"watch_id": HUGE}, None, "watch"),
        "watch_unknown_option": (function_app.create_watch, "POST", "watches", None, None,
                                 {"container": "rasters", "job_type": "validate_raster", "options": {HUGE: 1}},
                                 "options"),
        "sign_href": (function_app.sign_links, "GET", "sign", {"href": "https://elsewhere/" + HUGE}, None, None,
                      "href"),
    }


@pytest.mark.parametrize("name", list(cases("j")))
def test_an_error_quotes_a_bounded_part_of_the_input(http_engine, name):
    code, job = call(function_app.submit_job, "POST", "jobs/submit/hello_world",
                     route_params={"job_type": "hello_world"}, body={"n": 1})
    assert code in (200, 202), job
    fn, method, route, query, route_params, body, names = cases(json.loads(job)["job_id"])[name]
    code, answer = call(fn, method, route, query, route_params, body)
    assert 400 <= code < 500, (code, answer[:300])
    assert len(answer) < BOUND, (len(answer), answer[:300])
    assert names in answer, answer
    assert "7" * 200 not in answer
    message = json.loads(answer)["message"]
    assert len(message) < 1_000, message

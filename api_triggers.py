"""Schedules and watches over HTTP, as plain functions: request parts in, (status code, JSON body) out.

POST creates (201), or returns the same definition's existing resource (200); GET lists or reads one;
DELETE removes one. Every problem with a definition (expression, job type, parameters, container) is
a 400 naming the field, found when it is created.
"""
from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

import engine_triggers
from api_jobs import parse_json_object
from api_models import Deleted, ScheduleList, ScheduleRequest, ScheduleView, WatchList, WatchRequest, WatchView
from errors import ParameterValidationError, validation_errors
from models import ScheduleRecord, WatchRecord, utcnow
from task_manager import Engine

Response = tuple[int, dict[str, Any]]
M = TypeVar("M", bound=BaseModel)


def _request(model: type[M], engine: Engine, body: bytes) -> M:
    """The body as ``model``; 400 with one entry per bad field otherwise."""
    value = parse_json_object(body, engine.settings.max_request_bytes)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise ParameterValidationError("invalid request: " + "; ".join(f"{e['field']}: {e['message']}"
                                                                      for e in errors), errors=errors) from None


def schedule_view(row: ScheduleRecord) -> ScheduleView:
    """What the API shows of a schedule."""
    return ScheduleView(next_slot=engine_triggers.next_slot(row, utcnow()),
                        **row.model_dump(include=set(ScheduleView.model_fields) - {"next_slot"}))


def watch_view(row: WatchRecord) -> WatchView:
    """What the API shows of a watch."""
    return WatchView(**row.model_dump(include=set(WatchView.model_fields)))


def _out(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def create_schedule(engine: Engine, body: bytes) -> Response:
    """POST /api/schedules: 201 a new schedule, 200 the same definition's existing one."""
    request = _request(ScheduleRequest, engine, body)
    row, created = engine.triggers.create_schedule(request.job_type, request.parameters,
                                                    request.expression, request.name)
    return (201 if created else 200), _out(schedule_view(row))


def list_schedules(engine: Engine) -> Response:
    """GET /api/schedules."""
    rows = sorted(engine.triggers.list_schedules(), key=lambda r: r.created_at)
    return 200, _out(ScheduleList(schedules=[schedule_view(r) for r in rows]))


def get_schedule(engine: Engine, schedule_id: str) -> Response:
    """GET /api/schedules/{schedule_id}."""
    return 200, _out(schedule_view(engine.triggers.get_schedule(schedule_id)))


def delete_schedule(engine: Engine, schedule_id: str) -> Response:
    """DELETE /api/schedules/{schedule_id}: jobs it started are left alone."""
    engine.triggers.delete_schedule(schedule_id)
    return 200, _out(Deleted(deleted=schedule_id))


def create_watch(engine: Engine, body: bytes) -> Response:
    """POST /api/watches: 201 a new watch, 200 the same definition's existing one."""
    request = _request(WatchRequest, engine, body)
    row, created = engine.triggers.create_watch(request.container, request.prefix, request.job_type,
                                                 request.options, request.name)
    return (201 if created else 200), _out(watch_view(row))


def list_watches(engine: Engine) -> Response:
    """GET /api/watches: created over the API and from the WATCHES setting."""
    rows = sorted(engine.triggers.list_watches(), key=lambda r: (r.source, r.created_at))
    return 200, _out(WatchList(watches=[watch_view(r) for r in rows]))


def get_watch(engine: Engine, watch_id: str) -> Response:
    """GET /api/watches/{watch_id}."""
    return 200, _out(watch_view(engine.triggers.get_watch(watch_id)))


def delete_watch(engine: Engine, watch_id: str) -> Response:
    """DELETE /api/watches/{watch_id}: 409 for a watch defined in settings."""
    engine.triggers.delete_watch(watch_id)
    return 200, _out(Deleted(deleted=watch_id))

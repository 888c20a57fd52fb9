"""What may start a job by itself, in job-type terms (issue #13).

Schedules: whether an NCRONTAB expression and a job type's parameters are valid, when slots fall, and
the parameters a slot's job gets (``scheduled_for``). Watches: which job types a watch may start, and
the parameters an arrived blob gives them (``container``, ``blob``, ``source_etag``). Both definitions
are checked here when they are created, with the job type's own controller, so a bad one is a 400 then
and not a failed job later. ``engine_triggers`` stores, claims and submits; this module only decides.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from base_controller import JobController
from config import Settings
from controller_factory import JOB_TYPES, get_controller
from controller_geo_common import RASTER_SUFFIXES
from errors import ParameterValidationError, UnknownNameError
from models import BlobArrival, ScheduleRecord, WatchRecord, trigger_id, validate_container_name
from services_triggers import parse_blob_event, skip_reason, watches_blob
from services_ncrontab import Cron, CronError

SLOT_PARAMETER = "scheduled_for"
ARRIVAL_PARAMETERS = ("container", "blob", "source_etag")
MAX_PREFIX = 1024
MAX_SKIPPED_COUNTED = 10_000


def controller_for(job_type: str) -> JobController[Any]:
    """The job type's controller; an unknown one is a 400 (it is a field of the request) listing the known."""
    try:
        return get_controller(job_type)
    except UnknownNameError as exc:
        raise ParameterValidationError(f"job_type: {exc.message}", available=exc.details["available"], errors=[
            {"field": "job_type", "message": exc.message, "type": "unknown_job_type"}]) from None


def _invalid(field: str, message: str, kind: str) -> ParameterValidationError:
    return ParameterValidationError(f"{field}: {message}", errors=[{"field": field, "message": message, "type": kind}])


# ------------------------------------------------------------------ schedules
def schedule_cron(expression: str, now: datetime) -> Cron:
    """The parsed expression of a schedule; 400 naming the problem (syntax, more than once a minute, never)."""
    try:
        cron = Cron.parse(expression)
    except CronError as exc:
        raise _invalid("expression", str(exc), "ncrontab") from None
    if len(cron.seconds) != 1:
        raise _invalid("expression", f"the second field of {cron.expression!r} must be one value (e.g. 0): a "
                       "schedule runs at most once a minute (the schedules timer ticks every minute)", "ncrontab")
    if cron.next_after(now) is None:
        raise _invalid("expression", f"{cron.expression!r} never fires (no such date)", "ncrontab")
    return cron


def new_schedule(job_type: str, parameters: dict[str, Any], expression: str, name: str | None,
                 settings: Settings, now: datetime) -> ScheduleRecord:
    """A schedule row, every part checked; its id is the definition's (same definition, same schedule)."""
    controller = controller_for(job_type)
    cron = schedule_cron(expression, now)
    if SLOT_PARAMETER in parameters:
        raise _invalid(f"parameters.{SLOT_PARAMETER}", "set by the schedule for each slot; leave it out",
                       "set_by_schedule")
    validated = controller.validate(parameters, settings).model_dump(mode="json")
    schedule_id = trigger_id("schedule", {"job_type": job_type, "parameters": validated,
                                          "expression": cron.expression})
    return ScheduleRecord(schedule_id=schedule_id, name=name, job_type=job_type, parameters=validated,
                          expression=cron.expression, created_at=now)


def due_slot(schedule: ScheduleRecord, now: datetime) -> tuple[datetime | None, int]:
    """The latest slot after the schedule's last one (or its creation) and at or before ``now``, and how
    many slots before it the latest-only policy skips; (None, 0) when nothing is due."""
    cron = stored_cron(schedule)
    if cron is None:
        return None, 0
    after = max(schedule.created_at, schedule.last_slot or schedule.created_at)
    latest = cron.latest_at_or_before(now)
    if latest is None or latest <= after:
        return None, 0
    return latest, cron.count_between(after, latest, MAX_SKIPPED_COUNTED)


def next_slot(schedule: ScheduleRecord, now: datetime) -> datetime | None:
    """The schedule's next slot after ``now``."""
    cron = stored_cron(schedule)
    return cron.next_after(now) if cron is not None else None


def stored_cron(schedule: ScheduleRecord) -> Cron | None:
    """A stored schedule's expression, parsed; None for one stored before a rule it breaks was checked (e.g.
    non-ASCII digits, issue 20): that schedule never fires, and stops no other one."""
    try:
        return Cron.parse(schedule.expression)
    except CronError:
        return None


def slot_parameters(schedule: ScheduleRecord, slot: datetime) -> dict[str, Any]:
    """The parameters of a slot's job: the schedule's, plus the slot (part of the job's identity)."""
    return {**schedule.parameters, SLOT_PARAMETER: slot.isoformat()}


# ------------------------------------------------------------------ watches
def watchable_job_types() -> list[str]:
    """Job types a watch can start: those that take a container, a blob and its version."""
    return sorted(name for name, c in JOB_TYPES.items()
                  if set(ARRIVAL_PARAMETERS) <= set(c.parameters_model.model_fields))


def new_watch(container: str, prefix: str, job_type: str, options: dict[str, Any], name: str | None,
              settings: Settings, now: datetime, source: Literal["api", "settings"] = "api") -> WatchRecord:
    """A watch row, every part checked with the job type's controller (as a job for a blob under the
    prefix would be); its id is the definition's."""
    controller = controller_for(job_type)
    if job_type not in watchable_job_types():
        raise _invalid("job_type", f"{job_type} does not take a blob and its version, so a watch cannot start "
                       f"it; these can: {', '.join(watchable_job_types())}", "not_watchable")
    taken = sorted(set(options) & set(ARRIVAL_PARAMETERS + (SLOT_PARAMETER,)))
    if taken:
        raise ParameterValidationError(
            f"options: {', '.join(taken)} are set by the watch for each blob; leave them out",
            errors=[{"field": f"options.{t}", "message": "set by the watch for each blob", "type": "set_by_watch"}
                    for t in taken])
    try:
        validate_container_name(container)
    except ValueError as exc:
        raise _invalid("container", str(exc), "container_name") from None
    if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX or prefix.startswith("/"):
        raise _invalid("prefix", f"a prefix is a relative blob path of at most {MAX_PREFIX} characters", "prefix")
    sample = {**options, "container": container, "blob": f"{prefix}example{RASTER_SUFFIXES[0]}",
              "source_etag": "0x0"}
    try:
        controller.validate(sample, settings)
    except ParameterValidationError as exc:
        errors = [{**e, "field": "prefix" if e["field"] == "blob" else
                   e["field"] if e["field"] == "container" else f"options.{e['field']}"}
                  for e in exc.details.get("errors", [])]
        raise ParameterValidationError(
            f"invalid watch for {job_type}: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            **{**exc.details, "errors": errors}) from None
    watch_id = trigger_id("watch", {"container": container, "prefix": prefix, "job_type": job_type,
                                    "options": options})
    return WatchRecord(watch_id=watch_id, name=name, container=container, prefix=prefix, job_type=job_type,
                       options=options, source=source, created_at=now)


def arrival_from_event(event_id: str | None, event_type: str, subject: str, data: object) -> BlobArrival | None:
    """The blob version a BlobCreated event announces; None for other events; ValueError if malformed."""
    return parse_blob_event(event_id, event_type, subject, data)


def arrival_skip_reason(arrival: BlobArrival) -> str | None:
    """Why the blob starts nothing (sidecar, not a raster, empty), or None."""
    return skip_reason(arrival, RASTER_SUFFIXES)


def watches_for(watches: list[WatchRecord], arrival: BlobArrival) -> list[WatchRecord]:
    """The watches that cover the arrived blob."""
    return [w for w in watches if watches_blob(w.container, w.prefix, arrival)]


def arrival_parameters(watch: WatchRecord, arrival: BlobArrival) -> dict[str, Any]:
    """The parameters of the job a watch starts for one blob version."""
    return {**watch.options, "container": arrival.container, "blob": arrival.blob, "source_etag": arrival.etag}

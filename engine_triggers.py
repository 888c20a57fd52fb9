"""Jobs that start by themselves: schedules (each due slot, once, across any number of instances) and
watches (each new or changed raster blob, once per version). ``controller_triggers`` decides what is
valid and what is due; this module stores, claims and submits.

Schedules. A tick claims a slot by moving the schedule row's ``last_slot`` forward, If-Match: of any
number of instances ticking at once, one write wins. The winner submits the job with ``scheduled_for`` =
the slot, so the job id names the slot, then records the job on the row. A claimed slot with no job
recorded 30 s after its claim (the claimer died between claim and submit, or storage failed) is submitted
again by the next tick; the same id finds the same job. Missed slots (downtime, a tick that did not run)
follow one policy: **only the latest due slot runs**; the ones before it are skipped and counted in
``skipped_slots``.

Watches. An arrival is submitted once per covering watch with ``source_etag`` = the blob's ETag, so a
redelivered event, a second instance or a second watcher finds the same job, and an overwritten blob
(a new ETag) is a new job. A permanent refusal (parameters a settings change made invalid) is logged and
not retried; a transient error is raised, so the event is delivered again.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

import controller_triggers as triggers
from config import Settings
from engine_jobs import Submitted
from errors import ConflictError, NotFoundError, OrchestratorError, TransientError, echo
from logs import log_event
from models import BlobArrival, ScheduleRecord, WatchRecord, utcnow
from repository_triggers import TriggerStore

logger = logging.getLogger(__name__)
MAX_RECORD_ATTEMPTS = 20
REDRIVE_AFTER = timedelta(seconds=30)  # a claim this old without a job: its claimer died or failed
_ID = re.compile(r"^[0-9a-f]{16}$")
SETTINGS_READ_AT = utcnow()  # the creation time shown for watches from settings


def _checked_id(kind: str, value: str) -> str:
    if not _ID.match(value or ""):
        raise NotFoundError(f"no {kind} with id {echo(value)}")
    return value


def next_slot(schedule: ScheduleRecord, now: datetime | None = None) -> datetime | None:
    """When the schedule fires next."""
    return triggers.next_slot(schedule, now or utcnow())


@dataclass(frozen=True)
class Triggers:
    """Schedules and watches: their rows (``store``), the settings that check them and hold the WATCHES setting,
    and how a due slot or an arrival becomes a job (``submit``, the engine's)."""

    store: TriggerStore
    settings: Settings
    submit: Callable[..., Submitted]

    # ------------------------------------------------------------------ schedules
    def create_schedule(self, job_type: str, parameters: dict[str, Any], expression: str,
                        name: str | None = None, now: datetime | None = None) -> tuple[ScheduleRecord, bool]:
        """Create a schedule (checked: expression, job type, parameters); (row, created). The same
        definition again returns the existing schedule."""
        row = triggers.new_schedule(job_type, parameters, expression, name, self.settings, now or utcnow())
        created = self.store.create(row)
        if created is not None:
            log_event(logger, "schedule_created", schedule_id=row.schedule_id, job_type=job_type, expression=expression)
            return created, True
        existing = self.store.get(ScheduleRecord, row.schedule_id)
        if existing is None:  # deleted between our insert and our read
            raise TransientError(f"schedule {row.schedule_id} changed while it was created; retry")
        return existing, False

    def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule."""
        return self.store.list(ScheduleRecord)

    def get_schedule(self, schedule_id: str) -> ScheduleRecord:
        """One schedule; NotFoundError otherwise."""
        row = self.store.get(ScheduleRecord, _checked_id("schedule", schedule_id))
        if row is None:
            raise NotFoundError(f"no schedule with id {echo(schedule_id)}")
        return row

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule (jobs it started are left alone); NotFoundError if there is none."""
        if not self.store.delete(ScheduleRecord, _checked_id("schedule", schedule_id)):
            raise NotFoundError(f"no schedule with id {echo(schedule_id)}")
        log_event(logger, "schedule_deleted", schedule_id=schedule_id)

    def run_due(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The timer's body: submit every schedule's due slot once; what was submitted (or refused).

        A schedule whose storage fails is logged and left to the next tick; the others go on.
        """
        now = now or utcnow()
        done: list[dict[str, Any]] = []
        for row in self.list_schedules():
            try:
                done += self._tick(row, now)
            except TransientError as exc:
                log_event(logger, "schedule_tick_failed", logging.WARNING, schedule_id=row.schedule_id,
                          error=exc.message)
        return done

    def _tick(self, row: ScheduleRecord, now: datetime) -> list[dict[str, Any]]:
        store, done = self.store, []
        unfinished = row.last_job_id is None and row.last_error is None  # with a claimed slot: no job, no error
        if row.last_slot is not None and unfinished and (
                row.claimed_at is None or now - row.claimed_at >= REDRIVE_AFTER):
            done.append(self._submit_slot(row, row.last_slot))  # the claimer died or failed: same slot, same job
            again = store.get(ScheduleRecord, row.schedule_id)
            if again is None:
                return done
            row = again
        slot, skipped = triggers.due_slot(row, now)
        if slot is None:
            return done
        claim = row.model_copy(update={"last_slot": slot, "claimed_at": now, "last_job_id": None, "last_error": None,
                                       "skipped_slots": row.skipped_slots + skipped})
        try:
            store.replace(claim)
        except (ConflictError, NotFoundError):  # another instance claimed first (or the schedule was deleted)
            log_event(logger, "schedule_slot_taken", schedule_id=row.schedule_id, slot=slot)
            return done
        if skipped:
            log_event(logger, "schedule_slots_skipped", logging.WARNING, schedule_id=row.schedule_id, slot=slot,
                      skipped=skipped, policy="latest only")
        return [*done, self._submit_slot(claim, slot)]

    def _submit_slot(self, row: ScheduleRecord, slot: datetime) -> dict[str, Any]:
        outcome: dict[str, Any] = {"schedule_id": row.schedule_id, "slot": slot.isoformat()}
        try:
            submitted = self.submit(row.job_type, triggers.slot_parameters(row, slot))
        except TransientError:
            raise
        except OrchestratorError as exc:  # e.g. a settings change made the parameters invalid: permanent
            log_event(logger, "schedule_slot_refused", logging.WARNING, schedule_id=row.schedule_id, slot=slot,
                      error=exc.message)
            self._record(row.schedule_id, slot, last_error=exc.message)
            return {**outcome, "error": exc.message}
        self._record(row.schedule_id, slot, last_job_id=submitted.job.job_id)
        log_event(logger, "schedule_slot_submitted", schedule_id=row.schedule_id, slot=slot,
                  job_id=submitted.job.job_id, created=submitted.created)
        return {**outcome, "job_id": submitted.job.job_id, "created": submitted.created}

    def _record(self, schedule_id: str, slot: datetime, **fields: Any) -> None:
        """Write what became of ``slot`` on the schedule row, unless a later slot was claimed meanwhile."""
        store = self.store
        for _ in range(MAX_RECORD_ATTEMPTS):
            row = store.get(ScheduleRecord, schedule_id)
            if row is None or row.last_slot != slot or all(getattr(row, k) == v for k, v in fields.items()):
                return
            try:
                store.replace(row.model_copy(update=fields))
                return
            except (ConflictError, NotFoundError):
                continue
        raise TransientError(f"schedule {schedule_id}: its row kept changing while slot {slot.isoformat()} "
                             "was recorded")

    # ------------------------------------------------------------------ watches
    def create_watch(self, container: str, prefix: str, job_type: str, options: dict[str, Any],
                     name: str | None = None) -> tuple[WatchRecord, bool]:
        """Create a watch (checked with the job type's controller); (row, created)."""
        row = triggers.new_watch(container, prefix, job_type, options, name, self.settings, utcnow())
        created = self.store.create(row)
        if created is not None:
            log_event(logger, "watch_created", watch_id=row.watch_id, container=container, prefix=prefix,
                      job_type=job_type)
            return created, True
        existing = self.store.get(WatchRecord, row.watch_id)
        if existing is None:
            raise TransientError(f"watch {row.watch_id} changed while it was created; retry")
        return existing, False

    def settings_watches(self) -> list[WatchRecord]:
        """The watches of the WATCHES setting that are valid (an invalid one is logged and left out)."""
        found = []
        for i, spec in enumerate(self.settings.watches):
            try:
                found.append(triggers.new_watch(
                    spec.get("container", ""), spec.get("prefix", ""), spec.get("job_type", ""),
                    spec.get("options") or {}, spec.get("name"), self.settings, SETTINGS_READ_AT, "settings"))
            except OrchestratorError as exc:
                log_event(logger, "settings_watch_invalid", logging.ERROR, index=i, error=exc.message)
        return found

    def list_watches(self) -> list[WatchRecord]:
        """The watches created over the API, then those from settings (one per id)."""
        rows = {w.watch_id: w for w in self.store.list(WatchRecord)}
        for watch in self.settings_watches():
            rows.setdefault(watch.watch_id, watch)
        return list(rows.values())

    def get_watch(self, watch_id: str) -> WatchRecord:
        """One watch (from the table or from settings); NotFoundError otherwise."""
        _checked_id("watch", watch_id)
        found = next((w for w in self.list_watches() if w.watch_id == watch_id), None)
        if found is None:
            raise NotFoundError(f"no watch with id {echo(watch_id)}")
        return found

    def delete_watch(self, watch_id: str) -> None:
        """Delete a watch; NotFoundError if there is none; ConflictError for one defined in settings."""
        if self.store.delete(WatchRecord, _checked_id("watch", watch_id)):
            log_event(logger, "watch_deleted", watch_id=watch_id)
            return
        if any(w.watch_id == watch_id for w in self.settings_watches()):
            raise ConflictError(f"watch {watch_id} is defined in the WATCHES setting; remove it there")
        raise NotFoundError(f"no watch with id {echo(watch_id)}")

    def on_blob_event(self, event_id: str | None, event_type: str, subject: str, data: Any) -> list[Submitted]:
        """The Event Grid function's body: a BlobCreated event starts one job per covering watch."""
        try:
            arrival = triggers.arrival_from_event(event_id, event_type, subject, data)
        except ValueError as exc:  # never becomes valid: not worth a redelivery
            log_event(logger, "arrival_malformed", logging.WARNING, event_id=event_id, error=str(exc))
            return []
        if arrival is None:
            log_event(logger, "arrival_ignored", event_id=event_id, reason=f"event type {event_type}")
            return []
        return self.on_blob_created(arrival)

    def on_blob_created(self, arrival: BlobArrival) -> list[Submitted]:
        """Start one job per watch covering this blob version (none for sidecars and non-rasters)."""
        ids: dict[str, Any] = {"container": arrival.container, "blob": arrival.blob, "etag": arrival.etag,
                               "event_id": arrival.event_id}
        reason = triggers.arrival_skip_reason(arrival)
        if reason:
            log_event(logger, "arrival_ignored", reason=reason, **ids)
            return []
        watches = triggers.watches_for(self.list_watches(), arrival)
        if not watches:
            log_event(logger, "arrival_unwatched", **ids)
            return []
        submitted: list[Submitted] = []
        transient: TransientError | None = None
        for watch in watches:
            try:
                result = self.submit(watch.job_type, triggers.arrival_parameters(watch, arrival))
            except TransientError as exc:
                transient = transient or exc
                continue
            except OrchestratorError as exc:
                log_event(logger, "arrival_refused", logging.WARNING, watch_id=watch.watch_id, error=exc.message, **ids)
                continue
            submitted.append(result)
            log_event(logger, "arrival_submitted", watch_id=watch.watch_id, job_id=result.job.job_id,
                      created=result.created, **ids)
        if transient is not None:
            raise transient
        return submitted

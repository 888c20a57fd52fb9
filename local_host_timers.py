"""Timer triggers for ``local_host``: TimeSpan and NCRONTAB parsing, and one thread per timer function.

Schedules are evaluated in UTC, like the Functions host without ``WEBSITE_TIME_ZONE``. When a claim
container is given, each occurrence runs on only one of several local hosts sharing the storage
account (the Azure host gets the same effect from a singleton blob lease).
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.timer import TimerRequest

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

logger = logging.getLogger(__name__)

_TIMESPAN = re.compile(r"^(?:([0-9]+)\.)?([0-9]{1,2}):([0-9]{1,2})(?::([0-9]{1,2})(\.[0-9]+)?)?$")  # ASCII digits
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() also takes '²' and '٣'; NCRONTAB reads ASCII digits only
_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12),
           ("day-of-week", 0, 6))
_NAMES = {4: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
          5: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]}
_OFFSET = {4: 1, 5: 0}


def parse_timespan(text: str | float) -> float:
    """Seconds in a .NET TimeSpan string: ``hh:mm[:ss[.fff]]`` or ``d.hh:mm:ss``; numbers pass through."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _TIMESPAN.match(str(text).strip())
    if not match:
        raise ValueError(f"not a TimeSpan (expected hh:mm:ss or d.hh:mm:ss): {text!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    if int(minutes) > 59 or int(seconds or 0) > 59:
        raise ValueError(f"TimeSpan out of range: {text!r}")
    return (int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)
            + float(fraction or 0))


class Schedule(Protocol):
    """Anything that gives the next occurrence strictly after a UTC time."""

    def next_after(self, when: datetime) -> datetime:
        """The first occurrence later than ``when``."""
        ...


@dataclass(frozen=True)
class IntervalSchedule:
    """A TimeSpan schedule ("00:05:00"): every interval, counted from the previous occurrence."""

    seconds: float

    def next_after(self, when: datetime) -> datetime:
        """``when`` plus the interval."""
        return when + timedelta(seconds=self.seconds)


class CronSchedule:
    """A six-field NCRONTAB schedule ``sec min hour day month day-of-week``.

    Fields take ``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n``, ``a/n`` and comma lists; months and days of the
    week also take three-letter names; Sunday is 0. Day of month and day of week must both match.
    """

    def __init__(self, expression: str) -> None:
        self.expression = expression
        if not expression.isascii():
            raise ValueError(f"NCRONTAB takes ASCII only (digits 0-9, names, '*,-/' and spaces): {expression!r}")
        parts = expression.split()
        if len(parts) != 6:
            raise ValueError(f"NCRONTAB needs 6 fields (sec min hour day month day-of-week): {expression!r}")
        self.fields = [self._field(i, part) for i, part in enumerate(parts)]

    def _field(self, index: int, text: str) -> frozenset[int]:
        name, low, high = _FIELDS[index]
        values: set[int] = set()
        for item in text.lower().split(","):
            base, _, step_text = item.partition("/")
            if step_text and not _DIGITS.fullmatch(step_text):
                raise ValueError(f"bad {name} step {step_text!r} in {self.expression!r}")
            step = int(step_text) if step_text else 1
            if base == "*":
                start, stop = low, high
            elif "-" in base:
                start, stop = (self._value(index, v) for v in base.split("-", 1))
            else:
                start = self._value(index, base)
                stop = high if step_text else start
            if step < 1 or not low <= start <= stop <= high:
                raise ValueError(f"bad {name} field {text!r} in {self.expression!r} (range {low}-{high})")
            values.update(range(start, stop + 1, step))
        return frozenset(values)

    def _value(self, index: int, text: str) -> int:
        if index in _NAMES and text in _NAMES[index]:
            return _NAMES[index].index(text) + _OFFSET[index]
        if not _DIGITS.fullmatch(text):
            raise ValueError(f"bad {_FIELDS[index][0]} value {text!r} in {self.expression!r}")
        return int(text)

    def next_after(self, when: datetime) -> datetime:
        """The first matching second later than ``when`` (searched up to 5 years ahead)."""
        seconds, minutes, hours, days, months, weekdays = self.fields
        t = when.replace(microsecond=0) + timedelta(seconds=1)
        limit = when + timedelta(days=366 * 5)
        while t < limit:
            if t.month not in months:
                t = (t.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0)
            elif t.day not in days or (t.weekday() + 1) % 7 not in weekdays:
                t = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            elif t.hour not in hours:
                t = (t + timedelta(hours=1)).replace(minute=0, second=0)
            elif t.minute not in minutes:
                t = (t + timedelta(minutes=1)).replace(second=0)
            elif t.second not in seconds:
                t += timedelta(seconds=1)
            else:
                return t
        raise ValueError(f"schedule {self.expression!r} never fires")


def parse_schedule(text: str) -> Schedule:
    """A TimeSpan ("hh:mm:ss") or six-field NCRONTAB schedule."""
    if _TIMESPAN.match(text.strip()):
        seconds = parse_timespan(text)
        if seconds <= 0:
            raise ValueError(f"a TimeSpan schedule must be positive: {text!r}")
        return IntervalSchedule(seconds)
    return CronSchedule(text)


def claim_occurrence(container: ContainerClient, function: str, when: datetime) -> bool:
    """True for the one host that creates this occurrence's marker blob first (the container is made on demand)."""
    name = f"local-host/timers/{function}/{when:%Y-%m-%dT%H-%M-%SZ}"
    try:
        container.upload_blob(name, b"", overwrite=False)
        return True
    except ResourceExistsError:
        return False
    except ResourceNotFoundError:
        try:
            container.create_container()
        except ResourceExistsError:
            pass
    try:
        container.upload_blob(name, b"", overwrite=False)
        return True
    except ResourceExistsError:
        return False


class TimerRunner:
    """Runs one timer function on its schedule in a daemon thread; failures are logged, never fatal."""

    def __init__(self, binding: Any, schedule: Schedule, claims: ContainerClient | None = None) -> None:
        self.binding = binding
        self.schedule = schedule
        self.claims = claims
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name=f"timer-{binding.name}", daemon=True)

    def start(self) -> None:
        """Start the schedule (and the run-on-startup invocation, if declared)."""
        self._thread.start()

    def stop(self) -> None:
        """Fire no more occurrences."""
        self._stop.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no invocation is running; True if none is."""
        return self._idle.wait(max(0.0, timeout))

    def _run(self) -> None:
        last: datetime | None = None
        now = datetime.now(UTC)
        due = self.schedule.next_after(now)
        if self.binding.run_on_startup:
            self._fire(now, last, past_due=False)
            last = now
        while not self._stop.wait(max(0.0, (due - datetime.now(UTC)).total_seconds())):
            now = datetime.now(UTC)
            if now < due:
                continue
            if self._claim(due):
                self._fire(due, last, past_due=(now - due).total_seconds() > 1.0)
                last = due
            due = self.schedule.next_after(max(datetime.now(UTC), due))

    def _claim(self, due: datetime) -> bool:
        if self.claims is None:
            return True
        try:
            won = claim_occurrence(self.claims, self.binding.name, due)
        except Exception as exc:  # noqa: BLE001 - like the host without its lock: skip this occurrence
            logger.warning("timer %s: cannot claim the %s occurrence, skipping it: %s", self.binding.name,
                           due.isoformat(), exc)
            return False
        if not won:
            logger.debug("timer %s: occurrence %s runs on another host", self.binding.name, due.isoformat())
        return won

    def _fire(self, due: datetime, last: datetime | None, past_due: bool) -> None:
        """Invoke with the host's ScheduleStatus as it stood before this run: Next is this occurrence."""
        never = datetime.min.replace(tzinfo=UTC)
        status = {"Last": (last or never).isoformat(), "Next": due.isoformat(),
                  "LastUpdated": (last or datetime.now(UTC)).isoformat()}
        request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
        self._idle.clear()
        try:
            self.binding.invoke(request)
            logger.info("Executed timer %s (Succeeded, occurrence %s)", self.binding.name, due.isoformat())
        except Exception:
            logger.exception("Executed timer %s (Failed, occurrence %s)", self.binding.name, due.isoformat())
        finally:
            self._idle.set()

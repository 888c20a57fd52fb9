"""NCRONTAB expressions as Azure Functions timers read them: six fields, ``sec min hour day month dow``.

A field is ``*``, a value, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n`` (from ``a`` to the end
of the field), or a comma list of these. Months also take ``jan``..``dec`` and days of the week
``sun``..``sat`` (any case, in ranges too); Sunday is 0. A time matches when every field matches, day
of month AND day of week, as NCrontab decides (classic cron ORs those two when both are restricted).
Times are UTC. Pure: no I/O, no clock; callers pass the times.
"""
from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta

FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12),
          ("day-of-week", 0, 6))
NAMES = {4: ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
         5: ("sun", "mon", "tue", "wed", "thu", "fri", "sat")}
HORIZON = timedelta(days=366 * 30)  # a Feb-29-on-a-Monday schedule fires every 28 years at worst
MAX_EXPRESSION = 200
DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes '²' (int() refuses it) and '٣' (int() reads it)


class CronError(ValueError):
    """An expression that is not six valid NCRONTAB fields; the message names the field and the problem."""


def _value(index: int, text: str, expression: str) -> int:
    name, low, high = FIELDS[index]
    if index in NAMES and text in NAMES[index]:
        return NAMES[index].index(text) + low
    if not DIGITS.fullmatch(text):
        known = f" or a name ({', '.join(NAMES[index])})" if index in NAMES else ""
        raise CronError(f"{name} field: {text!r} is not a number{known} in {expression!r}")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name} field: {value} is out of range {low}-{high} in {expression!r}")
    return value


def _field(index: int, text: str, expression: str) -> tuple[int, ...]:
    name, low, high = FIELDS[index]
    values: set[int] = set()
    for item in text.lower().split(","):
        base, slash, step_text = item.partition("/")
        if not base or (slash and not step_text):
            raise CronError(f"{name} field: {item!r} is empty or incomplete in {expression!r}")
        step = 1
        if slash:
            if not DIGITS.fullmatch(step_text) or int(step_text) < 1:
                raise CronError(f"{name} field: step {step_text!r} must be a whole number of at least 1 "
                                f"in {expression!r}")
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, stop = _value(index, first, expression), _value(index, last, expression)
            if start > stop:
                raise CronError(f"{name} field: range {base!r} runs backwards in {expression!r}")
        else:
            start = _value(index, base, expression)
            stop = high if slash else start
        values.update(range(start, stop + 1, step))
    return tuple(sorted(values))


@dataclass(frozen=True)
class Cron:
    """A parsed six-field NCRONTAB expression: the allowed values of each field, sorted."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]

    @classmethod
    def parse(cls, expression: str) -> Cron:
        """Parse ``expression``; CronError naming the field and the problem otherwise."""
        if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION:
            raise CronError(f"an NCRONTAB expression is a string of at most {MAX_EXPRESSION} characters")
        if not expression.isascii():  # NCRONTAB in the Functions host reads ASCII digits, names and spaces only
            position, char = next((i, c) for i, c in enumerate(expression) if not c.isascii())
            raise CronError(f"{char!r} (U+{ord(char):04X}) at position {position} is not ASCII: fields take the "
                            f"digits 0-9, '*', ',', '-', '/' and English month and day names, separated by spaces")
        parts = expression.split()
        if len(parts) != 6:
            raise CronError(f"NCRONTAB needs 6 fields (second minute hour day month day-of-week), got "
                            f"{len(parts)} in {expression!r}; e.g. '0 */5 * * * *' is every 5 minutes")
        fields = [_field(i, part, expression) for i, part in enumerate(parts)]
        return cls(" ".join(parts), *fields)

    def _day_ok(self, t: datetime) -> bool:
        return t.day in self.days and (t.weekday() + 1) % 7 in self.weekdays

    def matches(self, t: datetime) -> bool:
        """True when ``t`` (to the second) is an occurrence."""
        return (t.month in self.months and self._day_ok(t) and t.hour in self.hours and t.minute in self.minutes
                and t.second in self.seconds)

    def next_after(self, when: datetime) -> datetime | None:
        """The first occurrence strictly later than ``when``; None if there is none within ``HORIZON``."""
        t = when.replace(microsecond=0) + timedelta(seconds=1)
        limit = when + HORIZON
        while t <= limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_ok(t):
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
            else:
                i = bisect_left(self.seconds, t.second)
                if i < len(self.seconds):
                    return t.replace(second=self.seconds[i])
                t = t.replace(second=0) + timedelta(minutes=1)
        return None

    def latest_at_or_before(self, when: datetime) -> datetime | None:
        """The last occurrence at or before ``when``; None if there is none within ``HORIZON``."""
        t = when.replace(microsecond=0)
        limit = when - HORIZON
        while t >= limit:
            if t.month not in self.months:
                t = t.replace(day=1, hour=0, minute=0, second=0) - timedelta(seconds=1)
            elif not self._day_ok(t):
                t = t.replace(hour=0, minute=0, second=0) - timedelta(seconds=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) - timedelta(seconds=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) - timedelta(seconds=1)
            else:
                i = bisect_right(self.seconds, t.second)
                if i:
                    return t.replace(second=self.seconds[i - 1])
                t = t.replace(second=0) - timedelta(seconds=1)
        return None

    def count_between(self, after: datetime, before: datetime, cap: int = 100_000) -> int:
        """Occurrences strictly between ``after`` and ``before`` (at most ``cap`` are counted)."""
        count, t = 0, self.next_after(after)
        while t is not None and t < before and count < cap:
            count += 1
            t = self.next_after(t)
        return count

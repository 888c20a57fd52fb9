"""Fault injection for tests: make the engine raise, throttle or die at a named point.

Off unless the environment variable ``GEOETL_FAULTS`` is set (never from HTTP), e.g.
``GEOETL_FAULTS="stage_decided=kill#1,task_claimed=throttle@0.2"``: at each named point, ``raise``
an exception, ``throttle`` (a TransientError as a storage 503 would), or ``kill`` the process with
SIGKILL; ``@p`` on each hit with probability p, ``#k`` once, on the k-th hit in this process.
Tests in one process may also ``arm()``.
"""
from __future__ import annotations

import os
import random
import signal
import threading
from dataclasses import dataclass

from errors import TransientError

ENV = "GEOETL_FAULTS"
POINTS = (
    "job_row_written",          # submit: job row written, stage-1 message not sent
    "stage_rows_written",       # run_stage: rows written, job not moved, messages not sent
    "task_messages_sent",       # run_stage: messages sent, stage not marked dispatched
    "task_claimed",             # run_task: task marked processing, handler not called
    "handler_returned",         # run_task: handler done, end not committed
    "stage_decided",            # end_task: the commit that ended the stage landed, nothing sent
    "advance_message_sent",     # advance: next message sent, the advance not yet logged
    "completion_aggregated",    # complete: result computed, job row not written
)
OPERATOR_POINTS = (  # on an operator's path only (a job's normal run never passes them)
    "retry_marked",             # retry: the stage to reopen recorded on the failed job, nothing reopened
    "retry_shard_reopened",     # retry: one transaction of failed tasks handed back, the rest not yet
    "retry_resumed",            # retry: the job processing again, the reopened tasks' messages not sent
)
MODES = ("raise", "throttle", "kill")


class InjectedFault(RuntimeError):
    """An exception raised on purpose at a fault point."""


@dataclass
class Fault:
    """What happens at one point."""

    mode: str
    probability: float = 1.0
    times: int | None = None  # None: every time (subject to probability)
    skip: int = 0  # hits to let pass before the fault fires


_lock = threading.Lock()
_armed: dict[str, Fault] = {}
_rng = random.Random(os.environ.get("GEOETL_FAULTS_SEED"))


def parse(spec: str) -> dict[str, Fault]:
    """Parse ``point=mode[@probability]`` items separated by commas."""
    faults = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        point, _, rest = item.partition("=")
        rest, _, nth = rest.partition("#")
        mode, _, prob = rest.partition("@")
        if point not in POINTS + OPERATOR_POINTS or mode not in MODES:
            raise ValueError(f"bad fault {item!r}: points {POINTS + OPERATOR_POINTS}, modes {MODES}")
        faults[point] = (Fault(mode, times=1, skip=int(nth) - 1) if nth
                         else Fault(mode, float(prob) if prob else 1.0))
    return faults


def arm(point: str, mode: str, times: int | None = 1, probability: float = 1.0, skip: int = 0) -> None:
    """Arm a fault in this process (tests); it fires after ``skip`` hits have passed."""
    if point not in POINTS + OPERATOR_POINTS or mode not in MODES:
        raise ValueError(f"bad fault {point}={mode}")
    with _lock:
        _armed[point] = Fault(mode, probability, times, skip)


def disarm() -> None:
    """Remove every armed fault (tests)."""
    with _lock:
        _armed.clear()


if os.environ.get(ENV):
    _armed.update(parse(os.environ[ENV]))


def point(name: str) -> None:
    """A named point in the engine; does nothing unless a fault is armed there."""
    if not _armed:
        return
    with _lock:
        fault = _armed.get(name)
        if fault is None or _rng.random() >= fault.probability:
            return
        if fault.skip > 0:
            fault.skip -= 1
            return
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del _armed[name]
    if fault.mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.mode == "throttle":
        raise TransientError(f"storage answered 503 Server Busy (injected at {name})")
    raise InjectedFault(f"injected fault at {name}")

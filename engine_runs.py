"""Runs: one tasks-queue message naming up to ``tasks_per_message`` neighbouring short tasks of a stage.

A queue message costs three requests (send, receive, delete) whatever its task does; for tasks of
milliseconds that is most of their storage traffic, so fan-out (``engine_fanout.runs``) sends such tasks
in runs. Each task of a run is still claimed, retried, ended and counted alone, as its own message would.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from logs import log_event
from models import TaskMessage, parse_task_id

if TYPE_CHECKING:
    from task_manager import Engine

logger = logging.getLogger(__name__)
RUN_BUDGET_S = 60  # a run starts no task after this; with a 300 s task limit it ends within 360 s of 600


def run_many(engine: "Engine", msg: TaskMessage, dequeue_count: int) -> None:
    """A run of neighbouring tasks: their rows read in one query, then each run as its own message would.

    Redelivered (a task of it may have stopped its host, or storage failed), the run is split into one
    message per task, so each is retried, deferred or poisoned alone; a task whose row has ended ignores
    its message. If the engine fails on a task (storage), that task and the rest go on as single
    messages; only if even that fails does the run come back whole, to be split then. No task of a run
    starts after ``RUN_BUDGET_S``: the rest go on as single messages, so a run of slow tasks ends well
    inside ``functionTimeout`` (budget + one task's time limit)."""
    singles = msg.singles()
    if dequeue_count > 1:
        engine.repos.tasks_queue.send_many(singles)
        log_event(logger, "task_run_split", job_id=msg.job_id, task_id=msg.task_id, count=msg.count,
                  dequeue_count=dequeue_count)
        return
    _, stage_no, first = parse_task_id(msg.task_id)
    rows = {t.index: t for t in engine.store.task_range(msg.job_id, stage_no, first, first + msg.count - 1)}
    began = time.monotonic()
    for i, single in enumerate(singles):
        if i and time.monotonic() - began > RUN_BUDGET_S:  # slow tasks: the rest go on as single messages
            engine.repos.tasks_queue.send_many(singles[i:])
            log_event(logger, "task_run_handed_on", job_id=msg.job_id, task_id=single.task_id,
                      left=len(singles) - i, reason=f"the run took over {RUN_BUDGET_S} s")
            return
        try:
            engine.run_one(single, 1, rows.get(first + i))
        except Exception as exc:
            log_event(logger, "task_run_interrupted", logging.WARNING, job_id=msg.job_id,
                      task_id=single.task_id, left=len(singles) - i, error=str(exc)[:500])
            try:
                engine.repos.tasks_queue.send_many(singles[i:])
            except Exception:  # noqa: BLE001 - the run comes back after its lease and is split then
                raise exc from None
            return

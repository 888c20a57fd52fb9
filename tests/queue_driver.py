"""Delivers queue messages to the app's queue functions in-process, the way the host would.

A message is deleted after its function returns; when the function raises it becomes visible again
(``dequeue_count`` grows) and after ``max_dequeue_count`` deliveries it moves to ``<queue>-poison``.
``copies=2`` delivers every message twice and ``shuffle_seed`` shuffles each round, to play out
at-least-once delivery deterministically. ``sweep=True`` runs the sweeper whenever the queues are idle.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from azure.functions.queue import QueueMessage

import function_app
from models import TERMINAL
from repository_queues import QueueProducer
from task_manager import Engine


@dataclass
class QueueDriver:
    """Pumps the jobs, tasks and poison queues until they are empty (and, with a job id, it has ended)."""

    engine: Engine
    copies: int = 1
    shuffle_seed: int | None = None
    sweep: bool = False
    delivered: dict[str, int] = field(default_factory=dict)
    job_messages: dict[str, str] = field(default_factory=dict)  # message id -> body, every one seen
    errors: list[str] = field(default_factory=list)
    sweeps: int = 0

    def __post_init__(self) -> None:
        function_app._engine = self.engine
        self._random = random.Random(self.shuffle_seed)
        repos = self.engine.repos
        self._queues: list[tuple[str, QueueProducer, object]] = [
            ("jobs", repos.jobs_queue, function_app.process_job_message),
            ("tasks", repos.tasks_queue, function_app.process_task_message),
            ("jobs-poison", repos.jobs_poison, function_app.process_job_poison),
            ("tasks-poison", repos.tasks_poison, function_app.process_task_poison),
        ]

    @property
    def job_bodies(self) -> list[str]:
        """Bodies of every distinct jobs-queue message seen."""
        return list(self.job_messages.values())

    def _round(self, name: str, queue: QueueProducer, fn) -> int:
        batch = list(queue.client.receive_messages(max_messages=32, messages_per_page=32, visibility_timeout=60))
        if name == "jobs":
            self.job_messages.update({m.id: m.content for m in batch})
        deliveries = [m for m in batch for _ in range(self.copies)]
        if self.shuffle_seed is not None:
            self._random.shuffle(deliveries)
        failed: set[str] = set()
        for m in deliveries:
            try:
                fn(QueueMessage(id=m.id, body=m.content.encode(), dequeue_count=m.dequeue_count))
            except Exception as exc:  # the host logs and retries; so do we
                failed.add(m.id)
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            self.delivered[name] = self.delivered.get(name, 0) + 1
        for m in batch:
            if m.id not in failed:
                queue.client.delete_message(m)
            elif m.dequeue_count >= self.engine.max_attempts:
                poison = QueueProducer(self.engine.repos.clients.queues, f"{queue.name}-poison")
                poison.ensure()
                poison.client.send_message(m.content)  # same encoding as every producer
                queue.client.delete_message(m)
            else:
                queue.client.update_message(m, visibility_timeout=0)
        return len(batch)

    def _pending(self) -> int:
        return sum(q.client.get_queue_properties().approximate_message_count for _, q, _ in self._queues)

    def run(self, job_id: str | None = None, timeout: float = 120) -> None:
        """Deliver until every queue is empty (and ``job_id``, if given, is terminal)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            moved = sum(self._round(name, q, fn) for name, q, fn in self._queues)
            if moved:
                continue
            if self._pending():
                time.sleep(0.2)  # delayed (backoff / deferred) messages not visible yet
                continue
            job = self.engine.store.get_job(job_id) if job_id else None
            if job is None or job.status in TERMINAL:
                return
            if not self.sweep:
                raise AssertionError(f"queues drained but job {job_id} is {job.status}")
            self.engine.sweep()
            self.sweeps += 1
            time.sleep(0.05)
        raise AssertionError(f"queues did not drain in {timeout}s; errors: {self.errors[-5:]}")

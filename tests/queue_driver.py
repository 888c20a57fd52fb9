"""Delivers queue messages to the app's queue functions in-process, optionally twice and shuffled.

This exercises the same entry points the host calls (function_app's queue functions), with
``dequeue_count`` set, so at-least-once delivery can be played out deterministically.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from azure.functions.queue import QueueMessage

import function_app
from repositories import Repositories
from task_manager import Engine


@dataclass
class QueueDriver:
    """Pumps the jobs and tasks queues until both are empty."""

    engine: Engine
    copies: int = 1
    shuffle_seed: int | None = None
    delivered: dict[str, int] = field(default_factory=lambda: {"jobs": 0, "tasks": 0})
    job_bodies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        function_app._engine = self.engine
        self._random = random.Random(self.shuffle_seed)

    @property
    def repos(self) -> Repositories:
        return self.engine.repos

    def _drain(self, queue) -> list[str]:
        bodies = []
        while True:
            batch = list(queue.client.receive_messages(max_messages=32, messages_per_page=32,
                                                       visibility_timeout=60))
            if not batch:
                return bodies
            for message in batch:
                bodies.append(message.content)
                queue.client.delete_message(message)

    def _deliver(self, bodies: list[str], fn, name: str) -> None:
        deliveries = [b for b in bodies for _ in range(self.copies)]
        if self.shuffle_seed is not None:
            self._random.shuffle(deliveries)
        seen: dict[str, int] = {}
        for body in deliveries:
            seen[body] = seen.get(body, 0) + 1
            fn(QueueMessage(id=f"m{len(seen)}", body=body.encode(), dequeue_count=seen[body]))
            self.delivered[name] += 1

    def run(self, max_rounds: int = 1000) -> None:
        """Deliver until no message is left in either queue."""
        for _ in range(max_rounds):
            jobs = self._drain(self.repos.jobs_queue)
            self.job_bodies.extend(jobs)
            self._deliver(jobs, function_app.process_job_message, "jobs")
            tasks = self._drain(self.repos.tasks_queue)
            self._deliver(tasks, function_app.process_task_message, "tasks")
            if not jobs and not tasks:
                return
        raise AssertionError("queues did not drain")

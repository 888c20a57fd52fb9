"""What the engine's parts work with, named once: the job store, the queues, the payload blobs, settings, the
group commit, the task I/O handed to handlers, and the attempt limit.

Each part of the engine (``engine_jobs``, ``engine_fanout``, ``engine_tasks``, ``engine_complete``,
``engine_admin``, ``engine_recovery``) takes this context, or the few collaborators it needs, and never the
``Engine``: the front door (``task_manager``) builds one context and hands it to each part.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from config import Settings
from controller_geo_common import STAC_EXTENTS
from engine_group_commit import GroupCommit
from engine_task_io import StorageTaskIO
from models import Status
from repositories import JobStore, Repositories
from repository_blobs import PayloadBlobs
from repository_queues import QueueProducer


@dataclass(frozen=True)
class Queues:
    """The engine's queues: ``jobs`` carries stage, completion and webhook messages; ``tasks`` the task
    messages; each has its poison queue."""

    jobs: QueueProducer
    tasks: QueueProducer
    jobs_poison: QueueProducer
    tasks_poison: QueueProducer


@dataclass(frozen=True)
class EngineContext:
    """Everything the engine's parts read or write, fixed when the engine is built."""

    store: JobStore
    queues: Queues
    blobs: PayloadBlobs  # the payload container: stored stage plans
    settings: Settings
    commits: GroupCommit
    io: StorageTaskIO
    max_attempts: int

    @classmethod
    def build(cls, repos: Repositories, max_attempts: int) -> "EngineContext":
        """A context over ``repos``; the task I/O reads earlier stages' results through the job store."""
        store = repos.store

        def completed_results(job_id: str, stage: int, first: int, last: int) -> list[dict[str, Any]]:
            return [t.result for t in store.task_range(job_id, stage, first, last) if t.status == Status.COMPLETED]

        return cls(store=store,
                   queues=Queues(repos.jobs_queue, repos.tasks_queue, repos.jobs_poison, repos.tasks_poison),
                   blobs=repos.blobs, settings=repos.settings, commits=GroupCommit(store),
                   io=StorageTaskIO(repos.settings, repos.rasters, STAC_EXTENTS, completed_results),
                   max_attempts=max_attempts)

    @property
    def shards_per_stage(self) -> int:
        """Counter shards a new stage gets unless its job was created with another number."""
        return self.settings.counter_shards

    def retry_cap_s(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1`` without jitter: base * 2^(attempt-1), capped."""
        doubled: float = self.settings.retry_base_delay_s * 2 ** max(0, attempt - 1)  # int ** int is typed Any
        return min(doubled, self.settings.retry_max_delay_s)

    def retry_delay_s(self, attempt: int) -> int:
        """Backoff before attempt ``attempt + 1``, with +-20% jitter."""
        return max(0, round(self.retry_cap_s(attempt) * random.uniform(0.8, 1.2)))

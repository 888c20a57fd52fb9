"""Repositories: the only code that reads and writes storage (tables, queues, blobs).

Where each row lives and how it is encoded: ``repository_entities``; what of a row goes to blobs (large JSON
values, the whole of cut texts): ``repository_payloads``.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from config import Settings
from errors import ConflictError, EntityTooLargeError, NotFoundError, OrchestratorError, TransientError
from models import JobRecord, Row, ShardRecord, StageRecord, TaskRecord, new_write_id
from repository_rules import (
    BATCH_MAX_BYTES, BATCH_MAX_OPERATIONS, MAX_ENTITY_BYTES, chunk_for_transactions,
)
from repository_batch import submit_transaction
from repository_blobs import PayloadBlobs
from repository_clients import StorageClients, translate_errors
from repository_entities import (
    INDEX_PARTITION, job_index_key, shard_row_key, stage_row_key, task_row_key,
)
from repository_payloads import PayloadRows
from repository_queries import JobQueries
from repository_queues import QueueProducer
from repository_rasters import RasterStore
from repository_triggers import TriggerStore

logger = logging.getLogger(__name__)
R = TypeVar("R", bound=Row)

REOPEN_COUNTER_RESERVE = 16 * 1024  # wire bytes kept free for a shard or stage row
_IF_MATCH = {"mode": UpdateMode.REPLACE, "match_condition": MatchConditions.IfNotModified}


def _too_large(error: BaseException | None) -> bool:
    """True for the service's answer to an entity, property or request over its size limits."""
    return getattr(error, "status_code", None) == 413 or "TooLarge" in str(getattr(error, "error_code", "") or "")


class BatchTooLarge(Exception):
    """The rows given to one transaction are over its size limit (nothing was sent)."""


class JobStore(JobQueries, PayloadRows):
    """Job, stage, counter-shard and task rows, with transparent payload spilling."""

    def __init__(self, tables: TableServiceClient, jobs_table: str, tasks_table: str,
                 blobs: PayloadBlobs) -> None:
        self.jobs_table_name, self.tasks_table_name = jobs_table, tasks_table
        self.jobs: TableClient = tables.get_table_client(jobs_table)
        self.tasks: TableClient = tables.get_table_client(tasks_table)
        self.index: TableClient = tables.get_table_client(f"{jobs_table}index")
        self.blobs = blobs

    def ensure(self) -> None:
        """Create the tables if missing."""
        for table in (self.jobs, self.tasks, self.index):
            with translate_errors(f"create table {table.table_name}"):
                try:
                    table.create_table()
                except ResourceExistsError:
                    pass

    def _query(self, table: TableClient, cls: type[R], flt: str, params: dict[str, Any],
               select: list[str] | None = None, resolve: bool = True) -> list[R]:
        with translate_errors(f"query {table.table_name}"):
            entities = list(table.query_entities(flt, parameters=params, select=select,
                                                 results_per_page=1000))
        return [self.unpack(cls, e, resolve) for e in entities]

    def _get(self, table: TableClient, cls: type[R], pk: str, rk: str) -> R | None:
        with translate_errors(f"read {table.table_name} {pk}/{rk}"):
            try:
                entity = table.get_entity(pk, rk)
            except ResourceNotFoundError:
                return None
        return self.unpack(cls, entity)

    def _replace(self, table: TableClient, row: R) -> R:
        """Conditional replace (If-Match row.etag) under a fresh write id; ConflictError if someone
        wrote first. A lost reply (the SDK's retry then sees 412, or an error surfaces) is recognised
        by re-reading the row: our write id there means the write was applied."""
        mine = row.model_copy(update={"write_id": new_write_id()})
        entity = self.pack(mine)
        pk, rk = entity["PartitionKey"], entity["RowKey"]
        try:
            with translate_errors(f"update {table.table_name} {pk}/{rk}"):
                meta = table.update_entity(entity, etag=row.etag, **_IF_MATCH)
        except (ConflictError, TransientError):
            current = self._get(table, type(row), pk, rk)
            if current is not None and current.write_id == mine.write_id:
                logger.info('{"event": "write_recognised", "table": "%s", "pk": "%s", "rk": "%s"}',
                            table.table_name, pk, rk)
                return current
            raise
        return mine.model_copy(update={"etag": meta["etag"]})

    # ------------------------------------------------------------ jobs
    def get_job(self, job_id: str) -> JobRecord | None:
        """The job row, or None."""
        return self._get(self.jobs, JobRecord, job_id, "job")

    def create_job(self, job: JobRecord) -> JobRecord | None:
        """Insert the job row; None if another writer created it first (a lost reply to our own
        insert is recognised by its write id and counts as ours)."""
        mine = job.model_copy(update={"write_id": new_write_id()})
        entity = self.pack(mine)
        try:
            with translate_errors(f"create job {job.job_id}"):
                try:
                    meta = self.jobs.create_entity(entity)
                except ResourceExistsError:
                    meta = None
        except TransientError:
            meta = None
            if self.get_job(job.job_id) is None:
                raise
        if meta is None:
            current = self.get_job(job.job_id)
            return current if current is not None and current.write_id == mine.write_id else None
        return mine.model_copy(update={"etag": meta["etag"]})

    def replace_job(self, job: JobRecord) -> JobRecord:
        """Conditional update of the job row, then its listing row (a projection: best effort)."""
        written = self._replace(self.jobs, job)
        self.index_job(written)
        return written

    def index_job(self, job: JobRecord) -> None:
        """Upsert the job's listing row; a failure is logged, never raised (the job row is the truth)."""
        entity = {"PartitionKey": INDEX_PARTITION, "RowKey": job_index_key(job.created_at, job.job_id),
                  "job_id": job.job_id, "job_type": job.job_type, "status": job.status.value, "stage": job.stage,
                  "total_stages": job.total_stages, "created_at": job.created_at, "updated_at": job.updated_at}
        try:
            with translate_errors(f"index job {job.job_id}"):
                self.index.upsert_entity(entity, mode=UpdateMode.MERGE)
        except OrchestratorError as exc:
            logger.warning('{"event": "index_write_failed", "job_id": "%s", "error": "%s"}', job.job_id, exc.message)

    def create_counters(self, stage: StageRecord, shards: list[ShardRecord]) -> StageRecord:
        """Create a stage row and its counter shards in one transaction (atomic, so either all exist);
        safe to repeat, and a lost reply is recognised by finding the rows. Returns the stored stage row."""
        ops = [("create", self.pack(row)) for row in (stage, *shards)]
        try:
            with translate_errors(f"create counters of stage {stage.stage} of job {stage.job_id}"):
                submit_transaction(self.tasks, ops)
        except (ConflictError, TransientError):
            pass  # created before (by us, whose reply was lost, or by a duplicate message)
        stored = self.get_stage(stage.job_id, stage.stage)
        if stored is None:
            raise TransientError(f"stage {stage.stage} of job {stage.job_id}: its counters could not be written")
        return stored

    def create_tasks(self, tasks: list[TaskRecord]) -> bool:
        """Create task rows in deterministic transactions; a batch that exists already (a repeat, or a lost
        reply) fails whole with a conflict and is skipped; a transient failure is tried again. True when
        some rows existed already (their tasks may have been sent, run or ended since)."""
        existed = False
        for batch in chunk_for_transactions([self.pack(t) for t in tasks]):
            for attempt in range(3):
                try:
                    with translate_errors(f"create {len(batch)} task rows of job {batch[0]['PartitionKey']}"):
                        submit_transaction(self.tasks, [("create", e) for e in batch])
                    break
                except ConflictError:
                    existed = True
                    break
                except TransientError:
                    if attempt == 2:
                        raise
        return existed

    def replace_stage(self, stage: StageRecord) -> StageRecord:
        """Conditional update of a stage row (write id recognises a lost reply)."""
        return self._replace(self.tasks, stage)

    def get_stage(self, job_id: str, stage: int) -> StageRecord | None:
        """One stage row, or None."""
        return self._get(self.tasks, StageRecord, job_id, stage_row_key(stage))

    def stage_rows(self, job_id: str) -> tuple[list[StageRecord], list[ShardRecord]]:
        """Every stage row and counter shard of a job (one partition range query)."""
        flt = "PartitionKey eq @pk and RowKey ge 'stage-' and RowKey lt 'stage.'"
        with translate_errors(f"query stages of {job_id}"):
            entities = list(self.tasks.query_entities(flt, parameters={"pk": job_id}))
        stages = [self.unpack(StageRecord, e) for e in entities if "-shard-" not in e["RowKey"]]
        shards = [self.unpack(ShardRecord, e) for e in entities if "-shard-" in e["RowKey"]]
        return stages, shards

    def stage_counters(self, job_id: str, stage: int) -> tuple[StageRecord, dict[int, ShardRecord]]:
        """A stage row and all its counter shards, with ETags, in one range query."""
        flt = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        params = {"pk": job_id, "lo": stage_row_key(stage), "hi": stage_row_key(stage) + "."}
        with translate_errors(f"read counters of stage {stage} of {job_id}"):
            entities = list(self.tasks.query_entities(flt, parameters=params))
        rows = {e["RowKey"]: e for e in entities}
        if params["lo"] not in rows:
            raise NotFoundError(f"counters of stage {stage} of job {job_id} are missing")
        shards = [self.unpack(ShardRecord, e) for k, e in rows.items() if k != params["lo"]]
        return self.unpack(StageRecord, rows[params["lo"]]), {s.shard: s for s in shards}

    def task_range(self, job_id: str, stage: int, lo: int, hi: int) -> list[TaskRecord]:
        """Task rows ``lo``..``hi`` (inclusive) of a stage, in one range query."""
        flt = "PartitionKey eq @pk and RowKey ge @lo and RowKey le @hi"
        params = {"pk": job_id, "lo": task_row_key(stage, lo), "hi": task_row_key(stage, hi)}
        return self._query(self.tasks, TaskRecord, flt, params)

    def commit_rows(self, tasks: list[TaskRecord], shards: list[ShardRecord],
                    stage: StageRecord | None) -> list[str]:
        """One transaction: task rows, counter shards, then the stage row, every one If-Match.

        Returns the new ETags in that order. ConflictError's ``details['operation']`` names the stale
        row (its position in that order) when the service says which.
        """
        rows: list[Row] = [*tasks, *shards, *([stage] if stage is not None else [])]
        ops = []
        for index, row in enumerate(rows):
            try:
                ops.append(("update", self.pack(row), {**_IF_MATCH, "etag": row.etag}))
            except EntityTooLargeError as exc:  # this row only: nothing was sent
                exc.details["operation"] = index
                raise
        if len(tasks) > 1 and len(chunk_for_transactions([op[1] for op in ops])) > 1:
            raise BatchTooLarge(f"{len(tasks)} task rows are over one transaction's size; commit fewer")
        try:
            with translate_errors(f"commit {len(tasks)} task rows of job {tasks[0].job_id if tasks else '?'}"):
                results = submit_transaction(self.tasks, ops)
        except TransientError:
            raise
        except OrchestratorError as exc:  # a conflict, or a row the service refused (its size): name which
            exc.details["operation"] = getattr(exc.__cause__, "index", None)
            if not isinstance(exc, ConflictError) and _too_large(exc.__cause__):
                raise EntityTooLargeError(f"the service refused a row as too large: {exc.message}",
                                          **exc.details) from exc
            raise
        return [result.get("etag") for result in results]

    def mark_stage(self, job_id: str, stage: int, **fields: Any) -> None:
        """Merge flag properties into a stage row without touching its counters (no ETag needed).

        A merge sets absolute values, so a repeat is harmless: a lost reply (the SDK does not re-send a
        MERGE) is answered by merging again."""
        entity = {"PartitionKey": job_id, "RowKey": stage_row_key(stage), **fields}
        for attempt in range(3):
            try:
                with translate_errors(f"mark stage {stage} of {job_id}"):
                    self.tasks.update_entity(entity, mode=UpdateMode.MERGE)
                return
            except TransientError:
                if attempt == 2:
                    raise

    def mark_cancelled(self, job_id: str, stage: int, shards: int) -> None:
        """Mark a stage row and its ``shards`` counter shards cancelled, in one transaction of merges (no ETag
        needed; a repeat, or a repeat after a lost reply, is harmless). A merge changes each row's ETag, and a
        claim commits If-Match on its shard: no claim can land after this returns."""
        ops = [("update", {"PartitionKey": job_id, "RowKey": key, "cancelled": True}, {"mode": UpdateMode.MERGE})
               for key in (stage_row_key(stage), *(shard_row_key(stage, s) for s in range(shards)))]
        for attempt in range(3):
            try:
                with translate_errors(f"mark stage {stage} of {job_id} cancelled"):
                    submit_transaction(self.tasks, ops)
                return
            except TransientError:
                if attempt == 2:
                    raise

    def reopen_chunks(self, tasks: list[TaskRecord]) -> list[list[TaskRecord]]:
        """Tasks grouped so each group fits one transaction beside its shard and stage rows."""
        by_key = {task_row_key(t.stage, t.index): t for t in tasks}
        batches = chunk_for_transactions([self.pack(t) for t in tasks], max_ops=BATCH_MAX_OPERATIONS - 2,
                                         max_bytes=BATCH_MAX_BYTES - 2 * REOPEN_COUNTER_RESERVE)
        return [[by_key[e["RowKey"]] for e in batch] for batch in batches]

    def reopen(self, tasks: list[TaskRecord], shard: ShardRecord, stage: StageRecord | None) -> None:
        """Atomically hand failed tasks back (queued) with their shard (and stage) counters; If-Match."""
        ops = [("update", self.pack(t), {**_IF_MATCH, "etag": t.etag}) for t in tasks]
        ops.append(("update", self.pack(shard), {**_IF_MATCH, "etag": shard.etag}))
        if stage is not None:
            ops.append(("update", self.pack(stage), {**_IF_MATCH, "etag": stage.etag}))
        with translate_errors(f"reopen shard {shard.shard} of stage {shard.stage} of {shard.job_id}"):
            submit_transaction(self.tasks, ops)

    def get_shard(self, job_id: str, stage: int, shard: int) -> ShardRecord | None:
        """One counter shard, or None."""
        return self._get(self.tasks, ShardRecord, job_id, shard_row_key(stage, shard))

    # ------------------------------------------------------------ tasks
    def get_task(self, job_id: str, stage: int, index: int) -> TaskRecord | None:
        """One task row, or None."""
        return self._get(self.tasks, TaskRecord, job_id, task_row_key(stage, index))

    def replace_task(self, task: TaskRecord) -> TaskRecord:
        """Conditional update of a task row."""
        return self._replace(self.tasks, task)


class Repositories:
    """Everything the engine reads and writes, built from settings."""

    def __init__(self, settings: Settings, clients: StorageClients | None = None) -> None:
        self.settings = settings
        self.clients = clients or StorageClients(settings)
        self.blobs = PayloadBlobs(self.clients.blobs, settings.payload_container)
        self.store = JobStore(self.clients.tables, settings.jobs_table, settings.tasks_table, self.blobs)
        self.jobs_queue = QueueProducer(self.clients.queues, settings.jobs_queue,
                                        threads=settings.fanout_threads)
        self.tasks_queue = QueueProducer(self.clients.queues, settings.tasks_queue,
                                         threads=settings.fanout_threads)
        self.tasks_poison = QueueProducer(self.clients.queues, f"{settings.tasks_queue}-poison")
        self.rasters = RasterStore(self.clients.blobs, settings.sas_enabled, settings.sas_ttl_minutes)
        self.jobs_poison = QueueProducer(self.clients.queues, f"{settings.jobs_queue}-poison")
        self.triggers = TriggerStore(self.clients.tables, settings.schedules_table)  # schedules and watches
        self._ready = False
        self._lock = threading.Lock()

    def ensure(self) -> "Repositories":
        """Create tables, queues and the payload container once per process."""
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self.store.ensure()
                    self.triggers.ensure()
                    self.blobs.ensure()
                    for queue in self.queues():
                        queue.ensure()
                    self._ready = True
        return self

    def probe(self) -> dict[str, dict[str, Any]]:
        """One cheap request per storage part: {part: {"ok": bool, "error"?: str, ...}}."""
        checks: dict[str, dict[str, Any]] = {}

        def check(name: str, fn) -> None:
            try:
                with translate_errors(f"health check of {name}"):
                    checks[name] = {"ok": True, **(fn() or {})}
            except OrchestratorError as exc:
                checks[name] = {"ok": False, "error": exc.message}

        once = {"retry_total": 0, "connection_timeout": 3, "read_timeout": 5}  # a probe answers now, or fails
        check("tables", lambda: list(self.store.jobs.query_entities(
            "PartitionKey eq 'health-probe'", results_per_page=1, **once)) and None)
        check("blobs", lambda: self.clients.blobs.get_container_client(
            self.settings.payload_container).get_container_properties(**once) and None)
        check("queues", lambda: {"depths": {q.name: q.client.get_queue_properties(**once).approximate_message_count
                                            for q in self.queues()}})
        return checks

    def queues(self) -> Iterable[QueueProducer]:
        """The queues the engine sends to."""
        return (self.jobs_queue, self.tasks_queue, self.jobs_poison, self.tasks_poison)


__all__ = ["JobStore", "Repositories", "MAX_ENTITY_BYTES", "ConflictError"]

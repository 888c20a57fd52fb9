"""Read-only queries over the job and task tables: listings (paged), and the narrow filters the
sweeper, retry, cancel and metrics use. Mixed into ``repositories.JobStore``, which provides the tables,
``_query`` and ``unpack``."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from azure.data.tables import TableClient

from models import JobRecord, Status, TaskRecord
from repository_clients import translate_errors
from repository_entities import INDEX_PARTITION


class JobQueries:
    """Listings and filters; every one a single (paged) query."""

    jobs: TableClient
    tasks: TableClient
    index: TableClient

    def list_jobs(self, status: Status | None, job_type: str | None, limit: int,
                  token: dict[str, str] | None) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
        """A page of listing rows, newest first, filtered server-side."""
        flt, params = "PartitionKey eq @pk", {"pk": INDEX_PARTITION}
        if status is not None:
            flt, params["status"] = flt + " and status eq @status", status.value
        if job_type is not None:
            flt, params["job_type"] = flt + " and job_type eq @job_type", job_type
        return self._page(self.index, flt, params, limit, token)

    def page_tasks(self, job_id: str, stage: int | None, status: Status | None, limit: int,
                   token: dict[str, str] | None) -> tuple[list[TaskRecord], dict[str, str] | None]:
        """A page of a job's tasks (payloads by reference: large ones are not loaded)."""
        lo, hi = ("task-", "task.") if stage is None else (f"task-{stage:02d}-", f"task-{stage:02d}.")
        flt = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        params: dict[str, Any] = {"pk": job_id, "lo": lo, "hi": hi}
        if status is not None:
            flt, params["status"] = flt + " and status eq @status", status.value
        entities, nxt = self._page(self.tasks, flt, params, limit, token)
        return [self.unpack(TaskRecord, e, resolve=False) for e in entities], nxt

    def task_statuses(self, job_id: str, stage: int) -> list[tuple[int, Status]]:
        """(index, status) of every task of a stage, in index order: one projected query, no payloads."""
        flt = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        params = {"pk": job_id, "lo": f"task-{stage:02d}-", "hi": f"task-{stage:02d}."}
        with translate_errors(f"query task statuses of {job_id} stage {stage}"):
            return [(int(e["RowKey"].rsplit("-", 1)[1]), Status(e["status"])) for e in
                    self.tasks.query_entities(flt, parameters=params, select=["RowKey", "status"])]

    def _page(self, table: TableClient, flt: str, params: dict[str, Any], limit: int,
              token: dict[str, str] | None) -> tuple[list[Any], dict[str, str] | None]:
        pager = table.query_entities(flt, parameters=params, results_per_page=limit).by_page(
            continuation_token=token)
        with translate_errors(f"query {table.table_name}"):
            entities = list(next(pager, []))
        return entities, pager.continuation_token or None

    # ------------------------------------------------------------ stages and counters

    def last_progress(self, job_id: str) -> datetime | None:
        """When any stage or counter row of the job last changed (a task ended, a stage began)."""
        flt = "PartitionKey eq @pk and RowKey ge 'stage-' and RowKey lt 'stage.'"
        with translate_errors(f"query progress of {job_id}"):
            stamps = [e.metadata.get("timestamp") for e in self.tasks.query_entities(
                flt, parameters={"pk": job_id}, select=["RowKey", "Timestamp"])]
        return max((t for t in stamps if t is not None), default=None)

    def list_tasks(self, job_id: str, stage: int | None = None, status: Status | None = None,
                   resolve: bool = True) -> list[TaskRecord]:
        """Task rows of a job (or of one stage), in stage then index order."""
        lo, hi = ("task-", "task.") if stage is None else (f"task-{stage:02d}-", f"task-{stage:02d}.")
        flt = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        params: dict[str, Any] = {"pk": job_id, "lo": lo, "hi": hi}
        if status is not None:
            flt += " and status eq @status"
            params["status"] = status.value
        return self._query(self.tasks, TaskRecord, flt, params, resolve=resolve)

    def task_timings(self, job_id: str) -> list[dict[str, Any]]:
        """task_type, status, error_code, started_at, ended_at of every task of a job (one narrow query)."""
        flt = "PartitionKey eq @pk and RowKey ge 'task-' and RowKey lt 'task.'"
        with translate_errors(f"read task timings of {job_id}"):
            return [dict(e) for e in self.tasks.query_entities(
                flt, parameters={"pk": job_id}, select=["task_type", "status", "error_code", "started_at", "ended_at"],
                results_per_page=1000)]

    def stale_tasks(self, job_id: str, stage: int, before: datetime) -> list[TaskRecord]:
        """Tasks of a stage still processing with a lease that ended before ``before`` (by their claimers'
        clocks: pass ``models.lease_cutoff`` of the reader's time, so clock skew never makes a live lease stale)."""
        flt = ("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi and status eq 'processing' "
               "and lease_until lt @before")
        params = {"pk": job_id, "lo": f"task-{stage:02d}-", "hi": f"task-{stage:02d}.", "before": before}
        return self._query(self.tasks, TaskRecord, flt, params, resolve=False)

    def count_tasks(self, job_id: str, stage: int, status: Status) -> int:
        """How many tasks of a stage have ``status`` (a narrow partition query: operator paths only)."""
        flt = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi and status eq @status"
        params = {"pk": job_id, "lo": f"task-{stage:02d}-", "hi": f"task-{stage:02d}.", "status": status.value}
        with translate_errors(f"count tasks of {job_id}"):
            return sum(1 for _ in self.tasks.query_entities(flt, parameters=params, select=["RowKey"],
                                                           results_per_page=1000))

    def stale_queued_tasks(self, job_id: str, stage: int, before: datetime) -> list[TaskRecord]:
        """Tasks of a stage queued and unchanged since before ``before`` (their message may be lost)."""
        flt = ("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi and status eq 'queued' "
               "and Timestamp lt @before")
        params = {"pk": job_id, "lo": f"task-{stage:02d}-", "hi": f"task-{stage:02d}.", "before": before}
        return self._query(self.tasks, TaskRecord, flt, params, resolve=False)

    def pending_webhooks(self, before: datetime) -> list[JobRecord]:
        """Ended jobs whose pending webhook was due before ``before``."""
        flt = "webhook eq 'pending' and webhook_due lt @before"
        return self._query(self.jobs, JobRecord, flt, {"before": before}, resolve=False)

    def active_jobs(self) -> list[JobRecord]:
        """Jobs that are queued or processing, or that a retry left part-way (the sweeper's work list)."""
        flt = "status eq 'queued' or status eq 'processing' or reopen_stage ge 1"
        return self._query(self.jobs, JobRecord, flt, {}, resolve=False)

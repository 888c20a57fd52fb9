"""Group commit: task invocations running at once in one host process share storage round trips.

Every task costs a read of its row, a claim and an end. Alone, each is one request; under load,
invocations of the same job arrive together (a host takes up to batchSize + newBatchThreshold
messages at once), so here they queue per job and one *leader* thread serves the whole queue:

- reads: nearby task rows of one stage come back in one RowKey range query;
- claims, releases and ends: one entity-group transaction (<= 100 operations) holds every waiting
  task row, each with its own If-Match, plus each touched counter shard once (the deltas of all its
  tasks combined, ``engine_counters.apply_changes``) and the stage row when a shard reaches zero.

There is no timer: the leader flushes at once, and whatever arrives meanwhile forms the next batch, so a lone
task pays no latency and a busy host batches naturally. A conflict on one task row, or a row refused for its
size, fails that caller only (the service or ``commit_rows`` names the operation) and the rest are
resubmitted; a conflict on the counters re-reads them. A lost reply is recognised row by row: every task row
carries its own write id and every counter row the transaction's token, so one row still bearing its mark
shows the (atomic) transaction landed, and each write is then judged by its own row: still ours, or moved
since by another writer (an end that landed counts; a claim, release or progress whose row moved is a
conflict). Counter rows are cached per job with their ETags, so a host that is the only writer of a stage
never reads them again.

A cancel marks every counter shard of the job's stages, and a claim commits If-Match on its shard, so no
claim lands after a cancel: a stale cached shard fails the transaction, is read again, and then refuses the
claim. A claim costs no request more for it.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, cast

from engine_counters import Change, apply_changes
from errors import ConflictError, JobCancelledError, OrchestratorError, TransientError
from logs import log_event
from models import TERMINAL, ShardRecord, StageRecord, TaskRecord, new_write_id
from repositories import BatchTooLarge, JobStore

logger = logging.getLogger(__name__)
MAX_TASK_OPS = 60  # per transaction, leaving room for up to 32 shard rows and the stage row
MAX_FLUSH_TRIES = 30
MAX_TRANSIENT_TRIES = 3  # then the callers see the storage fault (tasks are handed back)
READ_GAP = 128  # rows between two requested rows before they are read in separate ranges


@dataclass(eq=False)
class TaskWrite:
    """One caller's write: the task row to store (carrying the ETag it replaces) and its counter change."""

    kind: Literal["claim", "release", "end", "progress"]
    row: TaskRecord
    change: Change | None = None
    done: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)  # done, or asked to lead
    written: TaskRecord | None = None
    finished: StageRecord | None = None  # set on the one write whose commit ended the stage
    error: Exception | None = None

    def settle(self, written: TaskRecord | None = None, error: Exception | None = None) -> None:
        """Hand the outcome to the waiting caller."""
        self.written, self.error = written, error
        self.done.set()
        self.wake.set()


@dataclass(eq=False)
class _Read:
    stage: int
    index: int
    done: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    row: TaskRecord | None = None
    error: Exception | None = None

    def settle(self, row: TaskRecord | None = None, error: Exception | None = None) -> None:
        """Hand the outcome to the waiting caller."""
        self.row, self.error = row, error
        self.done.set()
        self.wake.set()


@dataclass
class _Job:
    lock: threading.Lock = field(default_factory=threading.Lock)
    reads: list[_Read] = field(default_factory=list)
    reading: bool = False
    writes: list[TaskWrite] = field(default_factory=list)
    writing: bool = False
    counters: dict[int, tuple[StageRecord, dict[int, ShardRecord]]] = field(default_factory=dict)


class GroupCommit:
    """Per host process: merges concurrent reads and writes of task rows, job by job."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    def _job(self, job_id: str) -> _Job:
        with self._lock:
            if len(self._jobs) > 1000:  # forget idle jobs (their cached counters are only a hint)
                for key in [k for k, j in self._jobs.items() if not (j.reading or j.writing)][:500]:
                    del self._jobs[key]
            return self._jobs.setdefault(job_id, _Job())

    # ------------------------------------------------------------------ reads
    def read(self, job_id: str, stage: int, index: int) -> TaskRecord | None:
        """A task row, read together with the rows other invocations want now."""
        job, mine = self._job(job_id), _Read(stage, index)
        self._wait(job, "reads", mine, lambda batch: self._flush_reads(job_id, batch))
        if mine.error is not None:
            raise mine.error
        return mine.row

    def _flush_reads(self, job_id: str, batch: list[_Read]) -> None:
        try:
            for stage, lo, hi in _ranges(batch):
                rows = {t.index: t for t in self.store.task_range(job_id, stage, lo, hi)}
                for r in batch:
                    if r.stage == stage and lo <= r.index <= hi:
                        r.row = rows.get(r.index)
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
            for r in batch:
                r.settle(error=exc)
        for r in batch:
            r.settle(r.row, r.error)

    # ------------------------------------------------------------------ writes
    def write(self, job_id: str, write: TaskWrite) -> TaskWrite:
        """Commit one task write with whatever else is waiting; ConflictError if its row moved."""
        job = self._job(job_id)
        self._wait(job, "writes", write, lambda batch: self._flush_writes(job_id, job, batch))
        if write.error is not None:
            raise write.error
        return write

    def _wait(self, job: _Job, kind: str, mine: TaskWrite | _Read, flush: Callable[[list[Any]], None]) -> None:
        """Queue ``mine``; lead if nobody does (or when asked to), else wait until it is served."""
        flag = "reading" if kind == "reads" else "writing"
        with job.lock:
            getattr(job, kind).append(mine)
            lead = not getattr(job, flag)
            setattr(job, flag, True)
        while True:
            if lead:
                self._lead(job, kind, flag, mine, flush)
            mine.wake.wait()
            mine.wake.clear()
            if mine.done.is_set():
                return
            lead = True  # handed the lead by a caller whose own operation is done

    @staticmethod
    def _lead(job: _Job, kind: str, flag: str, mine: TaskWrite | _Read, flush: Callable[[list[Any]], None]) -> None:
        """Serve the queue in batches (they form while a flush is in flight) until our own operation is
        done; then hand the lead to the next waiting caller, so no caller serves others for ever."""
        while True:
            with job.lock:
                waiting: list[Any] = getattr(job, kind)  # job.reads or job.writes, as ``kind`` says
                if mine.done.is_set() and waiting:
                    waiting[0].wake.set()  # its caller leads from here
                    return
                batch = _take(waiting) if kind == "writes" else waiting[:]
                if kind == "reads":
                    waiting.clear()
                if not batch:
                    setattr(job, flag, False)
                    return
            try:
                flush(batch)
            except Exception as exc:  # noqa: BLE001 - a flush bug must not leave anyone waiting
                for op in batch:
                    if not op.done.is_set():
                        op.settle(error=exc)

    def _flush_writes(self, job_id: str, job: _Job, batch: list[TaskWrite]) -> None:
        pending = list(batch)
        stage_no = pending[0].row.stage
        token = uuid.uuid4().hex
        transient = 0
        try:
            for _ in range(MAX_FLUSH_TRIES):
                if not pending:
                    return
                if stage_no not in job.counters:
                    job.counters[stage_no] = self.store.stage_counters(job_id, stage_no)
                stage, shards = job.counters[stage_no]
                if not _refuse_cancelled_claims(pending, shards):
                    return
                changes = [w.change for w in pending if w.change is not None]
                try:
                    shard_rows, stage_row = apply_changes(stage, shards, changes, token) if changes else ([], None)
                    shard_rows = [s.model_copy(update={"write_id": token}) for s in shard_rows]  # our mark
                except ConflictError:  # a change the counters cannot take: stale cache, or a doubled end
                    if not self._refresh(job_id, job, stage_no, pending):
                        return
                    continue
                rows = [w.row.model_copy(update={"write_id": new_write_id()}) for w in pending]
                rows = [r.model_copy(update={"end_token": r.write_id}) if w.kind == "end" else r
                        for r, w in zip(rows, pending, strict=True)]
                try:
                    etags = self.store.commit_rows(rows, shard_rows, stage_row)
                except BatchTooLarge:  # large rows: half of them wait for the next transaction
                    with job.lock:
                        job.writes[:0] = pending[len(pending) // 2:]
                    del pending[len(pending) // 2:]
                    continue
                except ConflictError as exc:
                    op = exc.details.get("operation")
                    if isinstance(op, int) and op < len(pending):
                        pending.pop(op).settle(error=ConflictError(f"task {rows[op].task_id} changed meanwhile"))
                        continue
                    if isinstance(op, int):  # a counter row moved (another process): read the counters again
                        job.counters[stage_no] = self.store.stage_counters(job_id, stage_no)
                        continue
                    if self._recognise(job_id, job, stage_no, pending, rows, token):
                        return  # no operation named: perhaps our own commit, whose reply was lost
                    if not self._refresh(job_id, job, stage_no, pending):
                        return
                    continue
                except TransientError:
                    if self._recognise(job_id, job, stage_no, pending, rows, token):
                        return
                    transient += 1
                    if transient >= MAX_TRANSIENT_TRIES:
                        raise
                    continue  # not applied: try again
                except OrchestratorError as exc:  # a row refused for what it holds (its size): that caller only
                    op = exc.details.get("operation")
                    if not (isinstance(op, int) and op < len(pending)):
                        raise
                    pending.pop(op).settle(error=exc)
                    continue
                self._remember(job, stage_no, stage, shards, shard_rows, stage_row, etags[len(rows):])
                self._settle(pending, [r.model_copy(update={"etag": e}) for r, e in zip(rows, etags, strict=False)],
                             stage_row if stage_row is not None and stage_row.status in TERMINAL else None)
                return
            raise TransientError(f"job {job_id}: task writes stayed contended for {MAX_FLUSH_TRIES} tries")
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
            job.counters.pop(stage_no, None)
            for w in pending:
                if not w.done.is_set():
                    w.settle(error=exc)

    def _refresh(self, job_id: str, job: _Job, stage_no: int, pending: list[TaskWrite]) -> bool:
        """Re-read the counters, and fail the writes whose task rows moved; False if none is left."""
        job.counters[stage_no] = self.store.stage_counters(job_id, stage_no)
        current = {t.index: t for t in self._rows(job_id, [w.row for w in pending])}
        for w in list(pending):
            row = current.get(w.row.index)
            if row is None or row.etag != w.row.etag:
                pending.remove(w)
                w.settle(error=ConflictError(f"task {w.row.task_id} changed meanwhile"))
        return bool(pending)

    def _rows(self, job_id: str, rows: list[TaskRecord]) -> list[TaskRecord]:
        stage = rows[0].stage
        indices = [r.index for r in rows]
        return self.store.task_range(job_id, stage, min(indices), max(indices))

    def _recognise(self, job_id: str, job: _Job, stage_no: int, pending: list[TaskWrite], rows: list[TaskRecord],
                   token: str) -> bool:
        """After an unclear failure: if our transaction landed, settle each write by its own row (True).

        The transaction landed when any of its rows still bears our mark (a task row its write id, a counter
        row the token, the stage row the token as finisher): another writer may have moved any other row since.
        A write whose row is still ours gets that row; an end whose row moved since still landed (and counted);
        a claim, release or progress whose row moved is a conflict: the row is someone else's now."""
        current = {t.index: t for t in self._rows(job_id, rows)}
        ours = [current.get(r.index) is not None and current[r.index].write_id == r.write_id for r in rows]
        stage, shards = job.counters[stage_no] = self.store.stage_counters(job_id, stage_no)
        finished = stage if stage.finisher == token and stage.status in TERMINAL else None
        if not (any(ours) or finished is not None or any(s.write_id == token for s in shards.values())):
            return False
        log_event(logger, "group_commit_recognised", job_id=job_id, rows=len(rows), moved_since=ours.count(False))
        outcomes: list[TaskRecord | Exception] = [
            current[r.index] if mine else r.model_copy(update={"etag": None}) if w.kind == "end"
            else ConflictError(f"task {r.task_id} changed meanwhile")
            for w, r, mine in zip(pending, rows, ours, strict=True)]
        self._settle(pending, outcomes, finished)
        return True

    @staticmethod
    def _remember(job: _Job, stage_no: int, stage: StageRecord, shards: dict[int, ShardRecord],
                  shard_rows: list[ShardRecord], stage_row: StageRecord | None, etags: list[str]) -> None:
        shards = dict(shards)
        for row, etag in zip(shard_rows, etags, strict=False):
            shards[row.shard] = row.model_copy(update={"etag": etag})
        if stage_row is not None:
            stage = stage_row.model_copy(update={"etag": etags[len(shard_rows)]})
        job.counters[stage_no] = (stage, shards)

    @staticmethod
    def _settle(pending: list[TaskWrite], written: list[TaskRecord | Exception], finished: StageRecord | None) -> None:
        for w, row in zip(pending, written, strict=True):
            if isinstance(row, Exception):
                w.settle(error=row)
                continue
            if finished is not None and w.kind == "end":
                w.finished, finished = finished, None  # exactly one caller advances the stage
            w.settle(row)


def _refuse_cancelled_claims(pending: list[TaskWrite], shards: dict[int, ShardRecord]) -> bool:
    """Fail the claims whose counter shard a cancel has marked (the claim would commit If-Match on that shard,
    so a stale copy fails there and is read again); False if nothing is left to commit."""
    for w in [w for w in pending if w.kind == "claim" and shards[w.row.shard].cancelled]:
        pending.remove(w)
        w.settle(error=JobCancelledError(f"task {w.row.task_id}: its job was cancelled"))
    return bool(pending)


def _take(waiting: list[TaskWrite]) -> list[TaskWrite]:
    """The next batch: writes of one stage, one per task row, at most MAX_TASK_OPS (the rest wait)."""
    if not waiting:
        return []
    stage = waiting[0].row.stage
    seen: set[int] = set()
    batch: list[TaskWrite] = []
    for w in waiting:
        if w.row.stage == stage and w.row.index not in seen and len(batch) < MAX_TASK_OPS:
            seen.add(w.row.index)
            batch.append(w)
    for w in batch:
        waiting.remove(w)
    return batch


def _ranges(batch: list[_Read]) -> list[tuple[int, int, int]]:
    """(stage, lo, hi) row ranges covering the requested reads, split where they are far apart."""
    out: list[tuple[int, int, int]] = []
    for stage in sorted({r.stage for r in batch}):
        indices = sorted({r.index for r in batch if r.stage == stage})
        lo = prev = indices[0]
        for i in indices[1:]:
            if i - prev > READ_GAP:
                out.append((stage, lo, prev))
                lo = i
            prev = i
        out.append((stage, lo, prev))
    return out


class ProgressReporter:
    """A running task's ``ctx.progress``: writes the task's percentage (and its shard's sum, so the job's
    progress moves too) at most every ``interval_s``; best effort, never failing the task."""

    def __init__(self, commits: GroupCommit, task: TaskRecord, interval_s: float) -> None:
        self.commits, self.task, self.interval_s = commits, task, interval_s
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, percent: float) -> None:
        """Record ``percent`` (0-100) if enough time has passed since the last write."""
        value = int(percent)
        with self._lock:
            if time.monotonic() - self._last < self.interval_s or value == (self.task.progress or 0):
                return
            self._last = time.monotonic()
            row = self.task.model_copy(update={"progress": value})
            change = Change(self.task.shard, progress=value - (self.task.progress or 0))
            try:
                # a write that returns was settled with its stored row (GroupCommit.write raises otherwise)
                written = self.commits.write(self.task.job_id, TaskWrite("progress", row, change)).written
                self.task = cast(TaskRecord, written)
            except (ConflictError, TransientError) as exc:
                log_event(logger, "task_progress_not_written", job_id=self.task.job_id, task_id=self.task.task_id,
                          error=str(exc)[:200])
                if isinstance(exc, ConflictError):  # perhaps our own earlier write, its reply lost: carry on from it
                    self._adopt()

    def _adopt(self) -> None:
        """Take the stored row as ours if it is still under our claim (moved only by our own progress writes)."""
        try:
            current = self.commits.store.get_task(self.task.job_id, self.task.stage, self.task.index)
        except TransientError:
            return
        if current is not None and current.same_claim(self.task):
            self.task = current

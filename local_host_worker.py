"""The Python worker's thread pool for ``local_host``: where sync functions run.

On Python 3.9+ the Functions Python worker runs sync functions on one ``ThreadPoolExecutor`` of
``PYTHON_THREADPOOL_THREAD_COUNT`` threads, min(32, CPUs + 4) when unset; HTTP, queue, timer and Event Grid
functions share it. The local host does the same, so concurrency (and group commit's company) is what Azure gives.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

THREADS_SETTING = "PYTHON_THREADPOOL_THREAD_COUNT"
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class WorkerSettingError(ValueError):
    """PYTHON_THREADPOOL_THREAD_COUNT is not a whole number >= 1."""


def sync_pool() -> ThreadPoolExecutor:
    """The process-wide pool of long-lived threads sync functions run on (created on first use). Triggers may
    hold more messages than it has threads; they wait for one."""
    global _pool
    with _pool_lock:
        if _pool is None:
            value = os.environ.get(THREADS_SETTING, "").strip()
            if value and not (value.isdigit() and int(value) >= 1):
                raise WorkerSettingError(f"{THREADS_SETTING} must be a whole number >= 1, got {value!r}")
            _pool = ThreadPoolExecutor(max_workers=int(value) if value else None, thread_name_prefix="worker")
        return _pool

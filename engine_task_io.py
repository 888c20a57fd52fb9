"""What task handlers and I/O planners may touch, handed to them by the engine (never imported by
controllers): raster blobs (only in the containers jobs may use), the app's own intermediate blobs, the
STAC catalogue, settings, scratch folders that always get removed, and a meter of the peak memory and
scratch disk a task used (reported in its result)."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

from base_controller import TaskIO
from config import Settings
from errors import CatalogueError, InputNotFoundError, NotFoundError, TaskError
from models import BlobInfo
# imported with the app, as the host indexes
from repository_pgstac import ExtentRules, PgstacRepository, PgstacSettings
from repository_rasters import RasterStore

INTERMEDIATE_PREFIX = "tiles/"  # controller_raster names its tiles tiles/<container>/<output stem>/...
MIB = 1024 * 1024
METER_INTERVAL_S = 0.05


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 once it is gone)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


class ResourceMeter:
    """Samples, every ``interval`` seconds on a small thread, this process's resident memory and the size
    of one scratch folder, and keeps the peaks. RSS is the whole worker process's (tasks running at the
    same time in one host share it): an upper bound for the task."""

    def __init__(self, folder: Path, interval: float = METER_INTERVAL_S) -> None:
        self.folder, self.interval = folder, interval
        self._process = psutil.Process()
        self.peak_rss = self.start_rss = self._process.memory_info().rss
        self.peak_scratch = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-meter", daemon=True)

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
        self.peak_scratch = max(self.peak_scratch, folder_bytes(self.folder))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "ResourceMeter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, float]:
        """Peaks so far, in MiB: process RSS, its rise during the task, and the scratch folder."""
        return {"peak_rss_mib": round(self.peak_rss / MIB, 1),
                "rss_increase_mib": round((self.peak_rss - self.start_rss) / MIB, 1),
                "peak_scratch_mib": round(self.peak_scratch / MIB, 3)}


@dataclass(frozen=True)
class Intermediates:
    """Blobs the app passes between its own tasks (tiles), in the payload container under ``tiles/``.

    Planners build these names; job parameters never name this container, and nothing outside the
    prefix (other jobs' parameters, results, plans) is reachable through it.
    """

    store: RasterStore
    container: str

    def _name(self, blob: str) -> str:
        if not blob.startswith(INTERMEDIATE_PREFIX) or ".." in blob.split("/"):
            raise TaskError(f"intermediate blob {blob!r} is not under {INTERMEDIATE_PREFIX}")
        return blob

    def upload(self, blob: str, path: Path) -> BlobInfo:
        """Store a local file as an intermediate blob (overwriting: names are deterministic)."""
        return self.store.upload(self.container, self._name(blob), path)

    def delete(self, blob: str) -> bool:
        """Remove an intermediate blob once its consumer is done; False if it was gone already."""
        return self.store.delete(self.container, self._name(blob))

    def download(self, blob: str, path: Path) -> BlobInfo:
        """Fetch an intermediate blob; a missing one is a permanent failure."""
        try:
            return self.store.download(self.container, self._name(blob), path)
        except NotFoundError as exc:
            raise InputNotFoundError(exc.message) from None


ResultsReader = Callable[[str, int, int, int], list[dict[str, Any]]]  # (job_id, stage, first, last) -> results


@dataclass
class StorageTaskIO:
    """I/O for one worker process, over the storage account and pgstac: what a handler sees as
    ``base_controller.TaskIO`` (mypy checks that this class has that shape); ``pgstac()`` connects on first use.

    ``rasters`` reaches only ``settings.job_containers`` whatever a task's stored parameters name
    (defence in depth behind submit-time validation); ``intermediates`` is the app's own tile store.
    """

    settings: Settings
    rasters: RasterStore
    extents: ExtentRules  # the catalogue's extent rules (controller_geo_common.STAC_EXTENTS)
    results_reader: ResultsReader = field(repr=False)  # completed tasks' results of a stage range (the job store)
    _pgstac: PgstacRepository | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    known_collections: set[str] = field(default_factory=set, repr=False)  # ensured by this process
    intermediates: Intermediates = field(init=False, repr=False)

    def __post_init__(self) -> None:
        payloads = self.settings.payload_container
        self.intermediates = Intermediates(self.rasters.restricted_to((payloads,)), payloads)
        self.rasters = self.rasters.restricted_to(self.settings.job_containers)

    def stage_results(self, job_id: str, stage: int, first: int, last: int) -> list[dict[str, Any]]:
        """Results of the completed tasks ``first``..``last`` of a stage of the job, in index order (one range
        query): how a task reads its share of an earlier stage's results."""
        return self.results_reader(job_id, stage, first, last)

    def pgstac(self) -> PgstacRepository:
        """The pgstac repository; TaskError when no database is configured."""
        if self._pgstac is None:
            with self._lock:
                if self._pgstac is None:
                    s = self.settings
                    if not s.pgstac_host:
                        raise CatalogueError("no STAC catalogue is configured: set PGSTAC_HOST (and PGSTAC_* "
                                             "settings)")
                    self._pgstac = PgstacRepository(PgstacSettings(
                        host=s.pgstac_host, port=s.pgstac_port, dbname=s.pgstac_dbname, user=s.pgstac_user,
                        password=s.pgstac_password, sslmode=s.pgstac_sslmode), self.extents)
        return self._pgstac

    def measure(self, folder: Path) -> ResourceMeter:
        """A meter of peak memory and of ``folder``'s size; use it as a context manager around the work,
        then put ``report()`` in the task's result (``resources``)."""
        return ResourceMeter(folder)

    @contextmanager
    def scratch(self, label: str = "task") -> Iterator[Path]:
        """A private temporary folder, removed on exit even when the task fails."""
        root = Path(self.settings.work_dir) if self.settings.work_dir else Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"geoetl-{label}-", dir=root))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


# Checked by mypy (tests/test_types.py): the engine's class has the shape handlers are promised.
_IMPLEMENTS: type[TaskIO] = StorageTaskIO

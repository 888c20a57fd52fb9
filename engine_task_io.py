"""What task handlers and I/O planners may touch, handed to them by the engine (never imported by
controllers): raster blobs (only in the containers jobs may use), the app's own intermediate blobs, the
STAC catalogue, settings, and scratch folders that always get removed."""
from __future__ import annotations

import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from config import Settings
from errors import NotFoundError, TaskError
from repository_rasters import BlobInfo, RasterStore

INTERMEDIATE_PREFIX = "tiles/"  # controller_raster names its tiles tiles/<container>/<output stem>/...


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

    def download(self, blob: str, path: Path) -> BlobInfo:
        """Fetch an intermediate blob; a missing one is a permanent failure."""
        try:
            return self.store.download(self.container, self._name(blob), path)
        except NotFoundError as exc:
            raise TaskError(exc.message) from None


@dataclass
class TaskIO:
    """I/O for one worker process; ``pgstac()`` connects on first use.

    ``rasters`` reaches only ``settings.job_containers`` whatever a task's stored parameters name
    (defence in depth behind submit-time validation); ``intermediates`` is the app's own tile store.
    """

    settings: Settings
    rasters: RasterStore
    extents: Any = None  # the catalogue's extent rules (controller_geo_common.STAC_EXTENTS)
    _pgstac: object | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    known_collections: set[str] = field(default_factory=set, repr=False)  # ensured by this process
    intermediates: Intermediates = field(init=False, repr=False)

    def __post_init__(self) -> None:
        payloads = self.settings.payload_container
        self.intermediates = Intermediates(self.rasters.restricted_to((payloads,)), payloads)
        self.rasters = self.rasters.restricted_to(self.settings.job_containers)

    def pgstac(self):
        """The pgstac repository; TaskError when no database is configured."""
        if self._pgstac is None:
            with self._lock:
                if self._pgstac is None:
                    if not self.settings.pgstac_host:
                        raise TaskError("no STAC catalogue is configured: set PGSTAC_HOST (and PGSTAC_* settings)")
                    from repository_pgstac import PgstacRepository, PgstacSettings

                    s = self.settings
                    self._pgstac = PgstacRepository(PgstacSettings(
                        host=s.pgstac_host, port=s.pgstac_port, dbname=s.pgstac_dbname, user=s.pgstac_user,
                        password=s.pgstac_password, sslmode=s.pgstac_sslmode), self.extents)
        return self._pgstac

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

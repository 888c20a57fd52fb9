"""What task handlers and I/O planners may touch, handed to them by the engine (never imported by
controllers): raster blobs, the STAC catalogue, settings, and scratch folders that always get removed."""
from __future__ import annotations

import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from config import Settings
from errors import TaskError
from repository_rasters import RasterStore


@dataclass
class TaskIO:
    """I/O for one worker process; ``pgstac()`` connects on first use."""

    settings: Settings
    rasters: RasterStore
    _pgstac: object | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    known_collections: set[str] = field(default_factory=set, repr=False)  # ensured by this process

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
                        password=s.pgstac_password, sslmode=s.pgstac_sslmode))
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

"""Fixtures layered settings -> repositories -> engine, over one private Azurite per test session.

Fixtures only: pytest finds them here. Helpers the tests share live in support.py (and conftest_geo.py);
a test module never imports this file (tests/test_layout.py checks it).
"""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from azurite_proc import Azurite  # noqa: E402
from config import Settings  # noqa: E402
from repositories import Repositories  # noqa: E402
from support import Listener, fresh_settings  # noqa: E402
from task_manager import Engine  # noqa: E402


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """A private Azurite on free ports, stopped by PID at the end of the session (even on failure)."""
    instance = Azurite(location=tmp_path_factory.mktemp("azurite")).start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def settings(azurite) -> Settings:
    """Fresh names for this test."""
    return fresh_settings(azurite.connection_string)


@pytest.fixture
def repos(settings) -> Repositories:
    """Repositories with their tables, queues and container created."""
    return Repositories(settings).ensure()


@pytest.fixture
def engine(repos) -> Engine:
    """The engine over this test's storage."""
    return Engine(repos)


@pytest.fixture(scope="session")
def pgstac_server(tmp_path_factory):
    """A private PostgreSQL + PostGIS + pgstac for the session (skips where PostGIS is missing)."""
    from conftest_geo import running_pgstac

    with running_pgstac(tmp_path_factory.mktemp("pgstac")) as server:
        yield server


@pytest.fixture
def geo_engine(azurite, pgstac_server, tmp_path) -> Engine:
    """An engine with the catalogue configured and its own containers."""
    pg = pgstac_server.settings
    settings = fresh_settings(azurite.connection_string, retry_base_delay_s=0, sweeper_grace_s=0,
                              pgstac_host=pg.host, pgstac_port=pg.port, pgstac_dbname=pg.dbname,
                              pgstac_user=pg.user, pgstac_password=pg.password,
                              input_container=f"in-{uuid.uuid4().hex[:8]}",
                              output_container=f"out-{uuid.uuid4().hex[:8]}",
                              default_collection=f"c-{uuid.uuid4().hex[:8]}", work_dir=str(tmp_path / "work"))
    engine = Engine(Repositories(settings).ensure())
    engine.repos.rasters.ensure_container(settings.input_container)
    return engine


@pytest.fixture
def loopback(tmp_path_factory):
    """A loopback file server (support.Listener, its own process), stopped by its pid after the test."""
    server = Listener(tmp_path_factory.mktemp("listener"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_engine(engine):
    """``engine`` behind the app's HTTP functions (``function_app``), for tests that call them directly."""
    import function_app
    previous, function_app._engine = function_app._engine, engine
    try:
        yield engine
    finally:
        function_app._engine = previous

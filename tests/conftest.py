"""Fixtures layered settings -> repositories -> engine, over one private Azurite per test session."""
from __future__ import annotations

import json
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
from task_manager import Engine  # noqa: E402


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """A private Azurite on free ports, stopped by PID at the end of the session (even on failure)."""
    instance = Azurite(location=tmp_path_factory.mktemp("azurite")).start()
    try:
        yield instance
    finally:
        instance.stop()


def fresh_settings(connection_string: str, **overrides) -> Settings:
    """Settings with table/queue/container names no other test run uses."""
    run = uuid.uuid4().hex[:10]
    overrides = {"schedules_table": f"sched{run}", "max_clock_skew_s": 0, **overrides}  # tests share one clock
    return Settings(storage_connection_string=connection_string, jobs_queue=f"jobs-{run}",
                    tasks_queue=f"tasks-{run}", jobs_table=f"jobs{run}", tasks_table=f"tasks{run}",
                    payload_container=f"payloads-{run}", **overrides)


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


WORKER_THREADS = json.loads((Path(__file__).resolve().parents[1] / "local.settings.json.example").read_text(
    encoding="utf-8"))["Values"]["PYTHON_THREADPOOL_THREAD_COUNT"]


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a host process use ``settings`` (and run sync functions on as many
    worker threads as the deployment gives the Python worker)."""
    return {"PYTHON_THREADPOOL_THREAD_COUNT": WORKER_THREADS,
            "AzureWebJobsStorage": settings.storage_connection_string or "",
            "JOBS_QUEUE": settings.jobs_queue, "TASKS_QUEUE": settings.tasks_queue,
            "JOBS_TABLE": settings.jobs_table, "TASKS_TABLE": settings.tasks_table,
            "PAYLOAD_CONTAINER": settings.payload_container, "SCHEDULES_TABLE": settings.schedules_table,
            "COUNTER_SHARDS": str(settings.counter_shards), "MAX_CLOCK_SKEW_S": str(settings.max_clock_skew_s)}


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
    """test_security_rasters' loopback listener (its own process), stopped by its pid after the test."""
    from test_security_rasters import Listener

    server = Listener(tmp_path_factory.mktemp("listener"))
    try:
        yield server
    finally:
        server.stop()

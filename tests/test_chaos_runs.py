"""Runs of short tasks under real faults: sync_container over 256 small rasters sends its build tasks in runs
of 8 (32 messages); two real hosts whose every storage request may lose its reply or fail, each first-
generation host killed with SIGKILL in the middle of its runs. Every file must be catalogued exactly once
(one item each, none failed), every stage advance once, and no message left (tests/test_chaos_transport)."""
from __future__ import annotations

import uuid

import pytest
import rasterio

from conftest_geo import smooth_image, write_raster
from controller_geo_common import STAC_EXTENTS
from engine_fanout import run_length
from test_chaos_transport import JobSpec, describe, run_transport

pytestmark = pytest.mark.chaos

FILES = 256


def sync_in_runs(tmp, pgstac_server) -> JobSpec:
    """sync_container over FILES tiny GeoTIFFs in a fresh container and collection."""
    from repository_pgstac import PgstacRepository

    suffix = uuid.uuid4().hex[:8]
    inputs, collection = f"in-{suffix}", f"runs-{suffix}"
    pg = pgstac_server.settings
    env = {"PGSTAC_HOST": pg.host, "PGSTAC_PORT": str(pg.port), "PGSTAC_DBNAME": pg.dbname,
           "PGSTAC_USER": pg.user, "PGSTAC_PASSWORD": pg.password.get_secret_value(),
           "INPUT_CONTAINER": inputs, "OUTPUT_CONTAINER": f"out-{suffix}", "DEFAULT_COLLECTION": collection,
           "WORK_DIR": str(tmp / "work"), "TASK_TIME_LIMIT_S": "8", "LOCAL_HOST_LEASE_SECONDS": "5"}
    names = [f"runs/tile{i:03d}.tif" for i in range(FILES)]

    def prepare(cluster) -> None:
        rasters = cluster.repos.rasters
        rasters.ensure_container(inputs)
        for i, name in enumerate(names):
            path = write_raster(tmp / f"tile{i}.tif", smooth_image(1, 16, 16, seed=i),
                                transform=rasterio.transform.from_origin(500_000 + (i % 16) * 1000,
                                                                         4e6 - (i // 16) * 1000, 30, 30))
            rasters.upload(inputs, name, path)

    def check(job_id: str, result) -> bool:
        catalogue = PgstacRepository(pg, STAC_EXTENTS)
        try:
            return (isinstance(result, dict) and (result["listed"], result["created"], result["failed"],
                                                  result["loaded"]) == (FILES, FILES, 0, FILES)
                    and catalogue.count_items(collection) == FILES)
        finally:
            catalogue.close()

    return JobSpec("sync_container", {"container": inputs, "prefix": "runs/", "collection_id": collection},
                   check, FILES, env, prepare)


@pytest.mark.parametrize("kill", ["handler_returned=kill#5",
                                  pytest.param("task_claimed=kill#9", marks=pytest.mark.slow)])
def test_sync_in_runs_under_transport_faults_and_a_kill_mid_run(azurite, tmp_path, pgstac_server, kill):
    assert run_length(8, FILES) == 8  # the build stage really goes out in runs
    result = run_transport(azurite, tmp_path / "hosts", f"runs-{kill}", lose=0.02, fail=0.02,
                           spec=sync_in_runs(tmp_path, pgstac_server), kill=kill, timeout=300)
    print(describe(result))
    assert result.hosts_started > 2, describe(result)  # the kills happened
    assert result.exact, describe(result)

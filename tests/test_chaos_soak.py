"""Soak (slow, skipped by default): transport faults at 1 % and 5 % with a kill -9 at every engine fault point.

Each run is one job on two real hosts (sweeper on) whose every storage request may lose its reply or
fail before it is applied (``lose=p,fail=p``), and whose first-generation hosts each SIGKILL themselves
the first time they reach one fault point of ``engine_faults.POINTS`` (``point=kill#1``); dead hosts
are replaced by hosts with the same transport faults and no kill point. Runs alternate the rate, walk
the points, and one in ``RASTER_EVERY`` is a process_raster_batch of 10 small synthetic rasters
(slower: four stages, GDAL, pgstac) instead of hello_world n=50. Every run must end exact (see
tests/test_chaos_transport.py); a failure names its seed and where the host logs are.

    .venv/bin/python -m pytest tests/test_chaos_soak.py -m slow -q       # 100 runs, hours on 2 cores
    CHAOS_SOAK_RUNS=10 .venv/bin/python -m pytest tests/test_chaos_soak.py -m slow -q
"""
from __future__ import annotations

import os
import uuid

import pytest
import rasterio

import engine_faults
from conftest_geo import smooth_image, write_raster
from controller_geo_common import STAC_EXTENTS
from test_chaos_transport import JobSpec, describe, hello_job, run_transport

pytestmark = pytest.mark.chaos

RUNS = int(os.environ.get("CHAOS_SOAK_RUNS", "100"))
RATES = (0.01, 0.05)
RASTER_EVERY = 5
RASTERS = 10
HELLO_N = 50


def soak_plan(runs: int = RUNS) -> list[dict]:
    """Run i: rate RATES[i % 2], kill point POINTS[(i // 2) % 8], raster batch when i % RASTER_EVERY == 4."""
    plan = []
    for i in range(runs):
        point = engine_faults.POINTS[(i // len(RATES)) % len(engine_faults.POINTS)]
        plan.append({"seed": 1000 + i, "rate": RATES[i % len(RATES)], "kill": f"{point}=kill#1",
                     "raster": i % RASTER_EVERY == RASTER_EVERY - 1})
    return plan


def run_id(run: dict) -> str:
    """Test id naming what is needed to replay a run."""
    job = "raster" if run["raster"] else "hello"
    return f"seed{run['seed']}-{run['rate']:.0%}-{run['kill'].split('=')[0]}-{job}"


def raster_batch(tmp, pgstac_server, tag: str) -> JobSpec:
    """process_raster_batch over RASTERS synthetic rasters uploaded under a prefix of a fresh container,
    catalogued in a fresh collection. Exact: every raster validated, converted and catalogued once
    (one distinct COG each and nothing else in the output container, one item each in pgstac)."""
    from repository_pgstac import PgstacRepository

    suffix = uuid.uuid4().hex[:8]
    inputs, outputs, collection = f"in-{suffix}", f"out-{suffix}", f"soak-{suffix}"
    names = [f"soak/{tag}/scene{i:02d}.tif" for i in range(RASTERS)]
    pg = pgstac_server.settings
    env = {"PGSTAC_HOST": pg.host, "PGSTAC_PORT": str(pg.port), "PGSTAC_DBNAME": pg.dbname,
           "PGSTAC_USER": pg.user, "PGSTAC_PASSWORD": pg.password.get_secret_value(),
           "INPUT_CONTAINER": inputs, "OUTPUT_CONTAINER": outputs, "DEFAULT_COLLECTION": collection,
           "WORK_DIR": str(tmp / "work"), "TASK_TIME_LIMIT_S": "20", "LOCAL_HOST_LEASE_SECONDS": "10"}
    catalogue = PgstacRepository(pg, STAC_EXTENTS)
    store = {}

    def prepare(cluster) -> None:
        rasters = store["rasters"] = cluster.repos.rasters
        rasters.ensure_container(inputs)
        for i, name in enumerate(names):
            path = write_raster(tmp / f"scene{i}.tif", smooth_image(1, 96, 96, seed=i),
                                transform=rasterio.transform.from_origin(500_000 + i * 5000, 4e6, 30, 30))
            rasters.upload(inputs, name, path)

    def check(job_id: str, result) -> bool:
        if not isinstance(result, dict) or result.get("count") != RASTERS:
            return False
        blobs = sorted(r["input"]["blob"] for r in result["rasters"])
        cogs = {o["blob"] for o in result["outputs"]}
        written = {b.name for b in store["rasters"].list(outputs)}  # nothing else, no stray copies
        try:
            return (blobs == names and len(cogs) == RASTERS and written == cogs
                    and catalogue.count_items(collection) == RASTERS)
        finally:
            catalogue.close()

    return JobSpec("process_raster_batch", {"prefix": f"soak/{tag}/"}, check, RASTERS, env, prepare)


@pytest.mark.slow
@pytest.mark.parametrize("run", soak_plan(), ids=run_id)
def test_soak_transport_faults_with_kill_9(azurite, tmp_path, request, run):
    if run["raster"]:
        spec = raster_batch(tmp_path, request.getfixturevalue("pgstac_server"), f"s{run['seed']}")
    else:
        spec = hello_job(HELLO_N, f"soak-{run['seed']}")
    result = run_transport(azurite, tmp_path / "hosts", run["seed"], lose=run["rate"], fail=run["rate"],
                           spec=spec, kill=run["kill"], timeout=420 if run["raster"] else 300)
    print(describe(result))
    assert result.exact, describe(result)

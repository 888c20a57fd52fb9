"""Links that still work (issue #15): results store blob references, the API signs when it answers, and
catalogue readers sign through POST /api/sign.

End to end on real services: a process_raster job (SAS_TTL_MINUTES=1) on a private Azurite and the session's
pgstac; the item found through stac-fastapi-pgstac (a uvicorn subprocess on a loopback port) with
pystac-client and the modifier in docs/api.md, signed by a local host process serving the app's HTTP functions,
read with rio-tiler at the COG's min and max zoom after the job's own links would have expired.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import rasterio
import requests
from azure.storage.blob import BlobServiceClient
from rio_cogeo.cogeo import cog_validate

import api_jobs
import engine_links
from azurite_proc import free_port, wait_for_port
from support import delegation_key, fresh_settings, settings_env
from conftest_geo import smooth_image, write_raster
from host_proc import HostProcess
from models import utcnow
from queue_driver import QueueDriver
from repositories import Repositories
from repository_rasters import RasterStore
from task_manager import Engine

ROOT = Path(__file__).resolve().parents[1]
TTL_MINUTES = 1  # the smallest SAS_TTL_MINUTES: the job's links (were they stored) die a minute after it ends
SERVED = ["sign_links", "job_status", "list_tasks", "get_task"]


# ------------------------------------------------------------------ one job, a signing host, a STAC API
@pytest.fixture(scope="module")
def job(azurite, pgstac_server, tmp_path_factory) -> SimpleNamespace:
    """A completed process_raster job over a 1024² RGB raster, run with SAS_TTL_MINUTES=1."""
    pg, run, tmp = pgstac_server.settings, uuid.uuid4().hex[:8], tmp_path_factory.mktemp("signing")
    settings = fresh_settings(azurite.connection_string, retry_base_delay_s=0, sweeper_grace_s=0,
                              pgstac_host=pg.host, pgstac_port=pg.port, pgstac_dbname=pg.dbname,
                              pgstac_user=pg.user, pgstac_password=pg.password, input_container=f"in-{run}",
                              output_container=f"out-{run}", default_collection=f"sign-{run}",
                              work_dir=str(tmp / "work"), sas_ttl_minutes=TTL_MINUTES)
    engine = Engine(Repositories(settings).ensure())
    engine.repos.rasters.ensure_container(settings.input_container)
    source = write_raster(tmp / "scene.tif", smooth_image(3, 1024, 1024),
                          transform=rasterio.transform.from_origin(500_000, 4_000_000, 30, 30))
    engine.repos.rasters.upload(settings.input_container, "scenes/scene.tif", source)
    code, body = api_jobs.submit(engine, "process_raster", b'{"blob": "scenes/scene.tif"}', "http://test")
    assert code == 202, body
    QueueDriver(engine).run(body["job_id"], timeout=300)
    status = api_jobs.status(engine, body["job_id"])[1]
    assert status["status"] == "completed", status.get("error_details")
    # what the job would have stored before issue #15: a link minted when it completed, valid TTL_MINUTES
    original = engine_links.signer(engine.io.rasters).link(status["result_data"]["outputs"][0]["url"])
    return SimpleNamespace(engine=engine, settings=settings, job_id=body["job_id"], status=status, tmp=tmp,
                           original=original)


@pytest.fixture(scope="module")
def host(job) -> HostProcess:
    """A local host process serving the app's signing, status and task routes over the job's storage."""
    s = job.settings
    env = {**settings_env(s), "INPUT_CONTAINER": s.input_container, "OUTPUT_CONTAINER": s.output_container,
           "SAS_TTL_MINUTES": str(TTL_MINUTES)}
    process = HostProcess(env, job.tmp / "host.log", functions=SERVED).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stac_api(job, pgstac_server) -> str:
    """stac-fastapi-pgstac over the session's pgstac (a uvicorn subprocess on a free loopback port), logged in
    as a read-only role (its DSN is built with quote_plus, which asyncpg does not undo for a password with a
    space, like the test server's)."""
    role, password = f"stacapi_{secrets.token_hex(4)}", secrets.token_hex(16)
    with psycopg.connect(pgstac_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE pgstac_read")
    port = free_port()
    env = {**os.environ, "PGUSER": role, "PGPASSWORD": password, "PGHOST": "127.0.0.1",
           "PGPORT": str(pgstac_server.port), "PGDATABASE": pgstac_server.dbname}
    log = open(job.tmp / "stac-api.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=job.tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}"
        assert requests.get(url, timeout=30).status_code == 200
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def documented_modifier(sign_url: str, stac_url: str) -> dict:
    """Run docs/api.md's pystac-client snippet against these URLs; its namespace (``catalog``, ``sign_inplace``)."""
    text = (ROOT / "docs" / "api.md").read_text()
    block = text.split("<!-- sign-modifier -->")[1].split("<!-- /sign-modifier -->")[0]
    code = block.split("```python")[1].split("```")[0]
    code, n = re.subn(r'^SIGN_URL = .*$', f"SIGN_URL = {sign_url!r}", code, flags=re.M)
    code, m = re.subn(r'^STAC_URL = .*$', f"STAC_URL = {stac_url!r}", code, flags=re.M)
    assert n == m == 1, "the documented snippet sets SIGN_URL and STAC_URL on lines of their own"
    namespace: dict = {}
    exec(compile(code, "docs/api.md#sign-modifier", "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def stored_text(engine: Engine, job_id: str) -> str:
    """Everything stored about the job: its rows in both tables and every payload blob (spilled values)."""
    store, parts = engine.store, []
    for table in (store.jobs, store.tasks):
        parts += [json.dumps(dict(e), default=str)
                  for e in table.query_entities("PartitionKey eq @pk", parameters={"pk": job_id})]
    payloads = engine.repos.clients.blobs.get_container_client(engine.settings.payload_container)
    parts += [payloads.download_blob(b.name).readall().decode("utf-8", "replace") for b in payloads.list_blobs()]
    return "\n".join(parts)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def expiry_of(link: dict) -> datetime:
    return datetime.fromisoformat(link["expires_at"])


# ------------------------------------------------------------------ the API: references stored, links minted
def test_results_store_blob_references_and_the_status_mints_links_that_work(job, host):
    stored = stored_text(job.engine, job.job_id)
    assert job.status["result_data"]["outputs"][0]["url"] in stored  # the references are there ...
    assert "sas_url" not in stored and "sig=" not in stored and "se=" not in stored  # ... and no SAS at all
    before = utcnow()
    status = requests.get(f"{host.url}/jobs/status/{job.job_id}", params={"verbose": "true"}, timeout=30).json()
    (output,) = status["result_data"]["outputs"]
    assert output["href"].startswith(output["url"] + "?") and "sas_url" not in output
    q = query(output["href"])
    assert q["sp"] == "r" and q["sr"] == "b" and "spr" not in q  # read-only; Azurite serves plain http
    assert before + timedelta(minutes=TTL_MINUTES) - timedelta(seconds=5) <= expiry_of(output) \
        <= utcnow() + timedelta(minutes=TTL_MINUTES, seconds=1)
    downloaded = requests.get(output["href"], timeout=60)
    assert downloaded.status_code == 200
    (job.tmp / "via-link.tif").write_bytes(downloaded.content)
    assert cog_validate(str(job.tmp / "via-link.tif"))[0]
    raster = status["result_data"]["rasters"][0]
    for part in (raster["input"], raster["cog"]):  # the validated input and the COG, each with its link
        assert requests.head(part["href"], timeout=30).status_code == 200 and part["expires_at"]
    cog_task = next(t for t in status["task_page"]["tasks"] if t["task_type"] == "raster_create_cog")
    assert cog_task["result"]["href"].startswith(output["url"] + "?")
    listed = requests.get(f"{host.url}/jobs/{job.job_id}/tasks", params={"stage": "2"}, timeout=30).json()
    one = requests.get(f"{host.url}/jobs/{job.job_id}/tasks/{cog_task['task_id']}", timeout=30).json()
    for result in (listed["tasks"][0]["result"], one["result"]):
        assert requests.head(result["href"], timeout=30).status_code == 200
    assert "sig=" not in stored_text(job.engine, job.job_id)  # answering stored nothing either


def test_a_link_minted_in_the_past_answers_403_and_one_minted_now_works(job):
    url = job.status["result_data"]["outputs"][0]["url"]
    stale = engine_links.signer(job.engine.io.rasters, now=utcnow() - timedelta(minutes=TTL_MINUTES + 1)).link(url)
    fresh = engine_links.signer(job.engine.io.rasters).link(url)
    assert stale.expires_at < utcnow() < fresh.expires_at
    assert requests.get(stale.href, timeout=30).status_code == 403
    assert requests.get(fresh.href, timeout=30).status_code == 200
    assert requests.get(url, timeout=30).status_code in (403, 404)  # the plain URL of a private container


def test_old_rows_holding_a_sas_url_are_answered_with_a_fresh_link_instead(job):
    url = job.status["result_data"]["outputs"][0]["url"]
    old = {"outputs": [{"url": url, "sas_url": url + "?se=2020-01-01&sig=old"}], "note": {"sas_url": None}}
    signed = engine_links.signer(job.engine.io.rasters).results(old)
    assert "sas_url" not in signed["outputs"][0] and signed["note"] == {}
    assert requests.head(signed["outputs"][0]["href"], timeout=30).status_code == 200


# ------------------------------------------------------------------ the signing endpoint
def test_sign_refuses_anything_but_blobs_of_the_job_containers(job, host):
    s = job.settings
    base = job.engine.repos.rasters.endpoint()
    cog = job.status["result_data"]["outputs"][0]["url"]
    refused = [
        cog.replace("127.0.0.1", "localhost"),  # the same blob under another host name
        f"https://other.blob.core.windows.net/{s.output_container}/x.tif",  # another account
        cog.replace(base, base.replace("devstoreaccount1", "otheraccount")),
        f"{base}elsewhere/x.tif",  # another container of this account
        f"{base}{s.payload_container}/{job.job_id}/job/result_data.json",  # every job's payloads
        f"{base}azure-webjobs-secrets/host.json",  # the Functions host's keys
        f"{base}{s.output_container}/../{s.payload_container}/x.json",  # traversal, plain and encoded
        f"{base}{s.output_container}/%2e%2e/{s.payload_container}/x.json",
        f"{base}{s.output_container}/",  # no blob
        "https://example.com/x.tif", "file:///etc/passwd", f"/vsicurl/{cog}", "scenes/scene.tif",
    ]
    allowed = [s.input_container, s.output_container]
    for href in refused:
        for r in (requests.post(f"{host.url}/sign", json={"href": href}, timeout=30),
                  requests.get(f"{host.url}/sign", params={"href": href}, timeout=30)):
            body = r.json()
            assert r.status_code == 400, (href, body)
            assert body["allowed_containers"] == allowed and ", ".join(allowed) in body["message"], body
    item = {"type": "Feature", "id": "x", "assets": {"data": {"href": cog}, "thumb": {"href": refused[1]}}}
    r = requests.post(f"{host.url}/sign", json=item, timeout=30)
    assert r.status_code == 400 and "asset 'thumb' of item 'x'" in r.json()["message"]
    for body in ([], {}, {"type": "Feature"}, {"href": cog, "extra": 1}, {"type": "FeatureCollection",
                                                                       "features": [{"type": "Feature"}]}):
        assert requests.post(f"{host.url}/sign", json=body, timeout=30).status_code == 400, body
    assert requests.post(f"{host.url}/sign", data=b'{"type": "Feature", "assets": {}, "x": NaN}',
                         timeout=30).status_code == 400
    one = requests.get(f"{host.url}/sign", params={"href": cog}, timeout=30).json()
    assert one["href"].startswith(cog + "?") and requests.head(one["href"], timeout=30).status_code == 200
    assert expiry_of(one) > utcnow()


# ------------------------------------------------------------------ identity: one delegation key for N links


class IdentityService:
    """A blob service under managed identity that counts its requests: it can only issue delegation keys
    (any other storage call would be an AttributeError)."""

    account_name, scheme, primary_hostname = "geoacct", "https", "geoacct.blob.core.windows.net"
    credential = object()  # no account key

    def __init__(self) -> None:
        self.requests = 0

    def get_user_delegation_key(self, start, expiry):
        self.requests += 1
        return delegation_key()


def test_minting_many_links_under_identity_costs_one_cached_and_renewed_delegation_key():
    service = IdentityService()
    store = RasterStore(service, sas_ttl_minutes=60)
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    cogs = engine_links.Signer(store.restricted_to(["cogs"]), now)
    document = {"outputs": [{"url": f"https://geoacct.blob.core.windows.net/cogs/run/b{i}.tif"} for i in range(500)]}
    signed = cogs.results(document)["outputs"]
    assert service.requests == 1
    assert all(query(o["href"])["spr"] == "https" and query(o["href"])["sp"] == "r" and "skoid" in query(o["href"])
               for o in signed)  # https only, read only, signed by the identity's key
    assert {o["expires_at"] for o in signed} == {(now + timedelta(minutes=60)).isoformat()}
    other = engine_links.Signer(store.restricted_to(["rasters"]), now + timedelta(hours=1))  # another copy
    assert other.link("https://geoacct.blob.core.windows.net/rasters/a.tif") and service.requests == 1
    assert other.link("https://geoacct.blob.core.windows.net/cogs/a.tif") is None  # not its container
    later = engine_links.Signer(store.restricted_to(["cogs"]), now + timedelta(hours=23, minutes=30))
    assert later.link("https://geoacct.blob.core.windows.net/cogs/a.tif") and service.requests == 2  # renewed
    off = engine_links.Signer(RasterStore(IdentityService(), sas_enabled=False, allowed_containers=["cogs"]), now)
    assert off.results(document)["outputs"][0] == {**document["outputs"][0], "href": document["outputs"][0]["url"]}


def test_urls_are_the_sdks_and_read_back_to_their_blob():
    key = base64.b64encode(b"k" * 64).decode()
    for account in ("https://geoacct.blob.core.windows.net", "http://127.0.0.1:10000/devstoreaccount1"):
        service = BlobServiceClient(account, credential={"account_name": "geoacct", "account_key": key})
        store = RasterStore(service)
        for blob in ("a/b.tif", "a b/c#d?.tif", "x/y é~(1).TIF", "%41/plus+sign.tif"):
            url = store.url("cogs", blob)
            assert url == service.get_blob_client("cogs", blob).url
            assert store.blob_at(url) == ("cogs", blob) == store.blob_at(url + "?sv=1&sig=x#frag")


# ------------------------------------------------------------------ a catalogue reader, end to end
@pytest.mark.e2e
def test_a_catalogue_reader_finds_signs_and_tiles_the_cog_after_the_jobs_links_expired(job, host, stac_api):
    from rio_tiler.io import Reader

    collection = job.settings.default_collection
    # wait out the link the job would have stored (minted when it completed, SAS_TTL_MINUTES=1)
    time.sleep(max(0.0, (job.original.expires_at - utcnow()).total_seconds() + 2))
    assert requests.get(job.original.href, timeout=30).status_code == 403
    raw = requests.get(f"{stac_api}/collections/{collection}/items", timeout=30).json()["features"]
    assert len(raw) == 1 and "?" not in raw[0]["assets"]["data"]["href"]  # the catalogue holds plain URLs

    namespace = documented_modifier(f"{host.url}/sign", stac_api)
    catalog = namespace["catalog"]
    (item,) = list(catalog.search(collections=[collection], max_items=10).items())  # pages signed as dicts
    data = item.assets["data"]
    assert data.href.startswith(raw[0]["assets"]["data"]["href"] + "?") and "sig" in query(data.href)
    assert datetime.fromisoformat(data.extra_fields["expires_at"]) > utcnow()
    fetched = catalog.get_collection(collection).get_item(item.id)  # an Item object signed in place
    assert "sig" in query(fetched.assets["data"].href)

    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), Reader(data.href) as cog:
        west, south, east, north = cog.get_geographic_bounds(cog.tms.rasterio_geographic_crs)
        assert cog.minzoom < cog.maxzoom
        for zoom in (cog.minzoom, cog.maxzoom):
            tile = cog.tms.tile((west + east) / 2, (south + north) / 2, zoom)
            image = cog.tile(tile.x, tile.y, tile.z)
            assert image.data.shape == (3, 256, 256) and image.mask.any(), zoom


def test_a_body_whose_type_is_not_a_string_is_a_400_not_a_500():
    """Found by schemathesis: ``{"type": [true, ...]}`` made the error path look up a list in a dict."""
    import api_sign
    from errors import ParameterValidationError

    with pytest.raises(ParameterValidationError):
        api_sign._check({"type": [True, [[], False, {}]], "72": None})

"""Issue 8's low findings, one test each: redacted tracebacks, https-only SAS, sleep_ms within the lease."""
from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from azure.storage.blob import BlobServiceClient

import api_jobs
from support import fresh_settings
from controller_hello_world import HELLO_WORLD
from errors import ParameterValidationError
from logs import RedactFilter, log_event
from repositories import Repositories
from repository_rasters import RasterStore
from task_manager import Engine

SAS_URL = "https://acct.blob.core.windows.net/in/a.tif?sv=2025-01-05&sp=r&sig=SiGnAtUrE%2Bsecret%3D"
CONNECTION = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=QUNDT1VOVEtFWQ==;EndpointSuffix=x"
SECRETS = ("SiGnAtUrE", "QUNDT1VOVEtFWQ", "hunter2", "pAsSw0rd", "fUnCkEy")


def _fail() -> None:
    raise RuntimeError(f"cannot open /vsicurl/{SAS_URL} with {CONNECTION}; dsn host=db password=hunter2; "
                       "url postgresql://geo:pAsSw0rd@db/x; https://app.net/api/jobs?code=fUnCkEy")


@pytest.fixture
def captured():
    """A logger whose lines are formatted by the standard Formatter into a string buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger(f"test-redaction-{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    return logger, stream


def test_log_event_redacts_the_traceback_it_logs(captured):
    logger, stream = captured
    try:
        _fail()
    except RuntimeError:
        log_event(logger, "task_crashed", logging.ERROR, exc_info=True, job_id="j1")
    text = stream.getvalue()
    assert not [s for s in SECRETS if s in text], text
    line = json.loads(text.split(" ", 2)[2])  # still one JSON object per line
    assert line["event"] == "task_crashed" and line["job_id"] == "j1"
    assert "Traceback (most recent call last)" in line["traceback"] and "in _fail" in line["traceback"]
    assert "RuntimeError: cannot open /vsicurl/https://acct.blob.core.windows.net/in/a.tif?" in line["traceback"]


def test_redact_filter_covers_logger_exception(captured):
    logger, stream = captured
    logger.addFilter(RedactFilter())
    try:
        _fail()
    except RuntimeError:
        logger.exception("function failed on %s", SAS_URL)
    text = stream.getvalue()
    assert not [s for s in SECRETS if s in text], text
    assert "function failed on https://acct.blob.core.windows.net/in/a.tif?" in text and "Traceback" in text


def test_without_the_filter_the_traceback_would_carry_the_secrets(captured):
    logger, stream = captured  # what the two tests above guard against
    try:
        _fail()
    except RuntimeError:
        logger.exception("failed")
    assert all(s in stream.getvalue() for s in SECRETS)


def test_read_sas_is_https_only_on_an_https_account():
    key = base64.b64encode(b"k" * 64).decode()
    service = BlobServiceClient("https://geoacct.blob.core.windows.net", credential={"account_name": "geoacct",
                                                                                     "account_key": key})
    url = RasterStore(service).read_sas_url("cogs", "a/b.tif")
    query = parse_qs(urlsplit(url).query)
    assert url.startswith("https://geoacct.blob.core.windows.net/cogs/a/b.tif?")
    assert query["spr"] == ["https"] and query["sp"] == ["r"] and query["sig"]


def test_read_sas_still_works_over_http_on_azurite(azurite, tmp_path):
    repos = Repositories(fresh_settings(azurite.connection_string)).ensure()
    container = f"sas-{uuid.uuid4().hex[:8]}"
    repos.rasters.ensure_container(container)
    (tmp_path / "x.bin").write_bytes(b"payload")
    repos.rasters.upload(container, "x.bin", tmp_path / "x.bin", content_type="application/octet-stream")
    url = repos.rasters.read_sas_url(container, "x.bin")
    assert url.startswith("http://") and "spr" not in parse_qs(urlsplit(url).query)
    assert requests.get(url, timeout=10).content == b"payload"


def test_sleep_ms_must_stay_below_the_task_time_limit(azurite):
    settings = fresh_settings(azurite.connection_string)  # TASK_TIME_LIMIT_S 300 by default
    assert HELLO_WORLD.validate({"sleep_ms": 240_000}, settings).sleep_ms == 240_000
    with pytest.raises(ParameterValidationError, match=r"sleep_ms: 240001 ms would outlast the tasks' 300 s time "
                                                       r"limit \(TASK_TIME_LIMIT_S\); at most 240000 ms") as caught:
        HELLO_WORLD.validate({"sleep_ms": 240_001}, settings)
    assert caught.value.details["errors"][0]["field"] == "sleep_ms"
    short = fresh_settings(azurite.connection_string, task_time_limit_s=4)
    assert HELLO_WORLD.validate({"sleep_ms": 3000}, short).sleep_ms == 3000
    engine = Engine(Repositories(short).ensure())
    code, body = api_jobs.respond(lambda: api_jobs.submit(engine, "hello_world", b'{"sleep_ms": 3500}', "http://t"))
    assert code == 400 and "4 s time limit" in body["message"] and "at most 3200 ms" in body["message"]

"""The OpenAPI document: valid 3.1, complete against the function index, and fuzzed against a live host.

Fuzzing is schemathesis (property-based, on hypothesis) over every operation of the served document, in
positive mode (requests the document allows) and negative mode (requests it forbids), against a real local
host over a private Azurite. Checks: no 5xx, every status code documented, the content type and the body
match the documented schema, and negative requests are rejected with a 4xx. Path ids are drawn partly from
jobs seeded first (completed, failed, queued), so 200/202/409 answers are reached, not only 404s. The fuzzed
host serves the HTTP functions only: fuzzed submissions are real jobs in Azurite but stay queued (a valid
hello_world may ask for 1,000 tasks sleeping 10 minutes each), which keeps the run bounded. The routes are
the ones the host prints from the function index (``get_functions()`` works once per app object and process,
and test_app_contract already calls it). Every operation is fuzzed; /api/health without a database configured.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
import requests
import schemathesis
from support import fresh_settings, post_job, settings_env, wait_terminal
from host_proc import HostProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

import api_openapi
from controller_factory import JOB_TYPES
from models import make_task_id
from repositories import Repositories

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
# Checks left out: `ignored_auth` (local hosts do not enforce function keys; Azure does), and
# `positive_data_acceptance` (a well-formed id of a job that does not exist is rightly a 404).
OPERATIONS = [(method.upper(), path) for path, item in api_openapi.document("http://x")["paths"].items()
              for method in item]
HTTP_ROUTE = re.compile(r"^http\s+(\S+)\s+(\S+)\s+->\s+(\S+)$")


@dataclass
class Live:
    """A local host serving the HTTP functions, with seeded jobs and the routes the host printed."""

    host: HostProcess
    routes: list[tuple[str, str, str]]  # (methods, path, function)
    completed: str
    failed: str
    queued: str
    document: dict  # as served at /api/openapi.json

    @property
    def base(self) -> str:
        """scheme://host:port."""
        return self.host.url.removesuffix("/api")


@pytest.fixture(scope="module")
def live(azurite, tmp_path_factory):
    """Seed a completed and a failed job with a full host, then serve HTTP only (new jobs stay queued)."""
    env = fresh_settings(azurite.connection_string, retry_base_delay_s=0)
    Repositories(env).ensure()
    tmp = tmp_path_factory.mktemp("openapi")
    full = HostProcess(settings_env(env), tmp / "seed.log").start()
    try:
        completed = post_job(full.url, {"n": 2, "message": "seed"})
        failed = post_job(full.url, {"n": 2, "message": "seed", "fail_indices": [1]})
        wait_terminal(full.url, completed, want=("completed",))
        wait_terminal(full.url, failed, want=("failed",))
    finally:
        full.stop()
    printed = (tmp / "seed.out").read_text().splitlines()
    routes = [m.groups() for m in map(HTTP_ROUTE.match, printed) if m]
    host = HostProcess(settings_env(env), tmp / "http.log", functions=[name for _, _, name in routes]).start()
    try:
        queued = post_job(host.url, {"n": 1, "message": "queued"})
        r = requests.get(f"{host.url}/openapi.json", timeout=30)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json"), r.text
        yield Live(host, routes, completed, failed, queued, r.json())
    finally:
        host.stop()


@pytest.fixture(scope="module")
def served(live) -> dict:
    """The document the host serves at /api/openapi.json."""
    return live.document


def test_served_document_is_valid_openapi_3_1(served, live):
    OpenAPIV31SpecValidator(served).validate()
    assert served["openapi"] == "3.1.0"
    assert served["servers"] == [{"url": live.base}]
    assert {"title", "version", "description"} <= set(served["info"])


def test_every_route_of_the_function_index_is_documented(served, live):
    paths = served["paths"]
    expected: set[tuple[str, str]] = set()
    for methods, path, _ in live.routes:
        path = re.sub(r"\{(\w+)[^}]*\}", r"{\1}", path)  # drop route constraints
        concrete = [path.replace("{job_type}", t) for t in JOB_TYPES] if "{job_type}" in path else [path]
        expected |= {(m.lower(), p) for m in methods.split(",") for p in concrete}
    assert len(live.routes) >= 12
    documented = {(m, p) for p, item in paths.items() for m in item}
    assert documented == expected
    for path, item in paths.items():
        for operation in item.values():
            placeholders = set(re.findall(r"\{(\w+)\}", path))
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == placeholders, path
            assert operation["security"] == served["security"] == api_openapi.SECURITY
            for code, response in operation["responses"].items():
                assert "application/json" in response["content"], (path, code)
    schemes = served["components"]["securitySchemes"]
    assert {(s["in"], s["name"]) for s in schemes.values()} == {("header", "x-functions-key"), ("query", "code")}


def test_each_job_type_has_its_own_submit_path_and_request_schema(served, live):
    schemas = served["components"]["schemas"]
    listed = {t["job_type"]: t for t in requests.get(f"{live.host.url}/job-types", timeout=30).json()["job_types"]}
    for job_type, controller in JOB_TYPES.items():
        operation = served["paths"][f"/api/jobs/submit/{job_type}"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[1]]
        assert ref.endswith("/" + controller.parameters_model.__name__)
        assert set(schema["properties"]) == set(listed[job_type]["parameters"]["properties"])
        assert controller.description in operation["description"]
        assert {"200", "202", "400", "413"} <= set(operation["responses"])
        query = {p["name"]: p["schema"] for p in operation["parameters"] if p["in"] == "query"}
        assert query == {"callback_url": {"type": "string", "format": "uri"}}
        settings_filled = set(getattr(controller.parameters_model, "SETTINGS_DEFAULTS", {}))
        assert not settings_filled & set(schema.get("required", [])), job_type
    assert "/api/jobs/submit/{job_type}" not in served["paths"]


# ---------------------------------------------------------------- what the fuzzer (and a few probes by hand) found
# Each was an API bug, since fixed: a 5xx, a body that is not JSON, or a request the document forbids accepted.
EDGE_REQUESTS = [
    ("GET", "/metrics?window_s=abc", None),  # was 500 (float() ValueError)
    ("GET", "/metrics?window_s=nan", None),  # was 500 (timedelta of NaN)
    ("GET", "/metrics?window_s=1e300", None),  # was 500 (timedelta overflow); the fuzzer sent 6955555207860068.0
    ("GET", "/jobs/stuck?older_than_s=nan", None),  # was 200 with {"older_than_s": NaN}: not JSON
    ("GET", "/jobs/stuck?older_than_s=inf", None),  # was 200 with Infinity
    ("GET", "/jobs/status/{job_id}?verbose=maybe", None),  # was 200: anything but 1/true/yes read as false
    ("GET", "/jobs/status/{job_id}?limit=0", None),  # was 200: limit checked only with verbose=true
    ("POST", "/jobs/submit/hello_world", '{"n": "3"}'),  # was 202: pydantic's lax mode coerced "3"
    ("POST", "/jobs/submit/sync_container", '{"datetime": 1700000000}'),  # was 202: a number as a date-time
    ("POST", "/jobs/submit/hello_world", "[" * 100_000),  # was 500: RecursionError in json.loads
]


@pytest.mark.parametrize(("method", "path", "body"), EDGE_REQUESTS,
                         ids=[f"{m} {p[:40]} {(b or '')[:24]}" for m, p, b in EDGE_REQUESTS])
def test_edge_request_is_a_documented_400(live, method, path, body):
    r = requests.request(method, live.host.url + path.format(job_id=live.completed), data=body, timeout=30)
    error = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} in a JSON body"))
    assert r.status_code == 400, r.text
    assert set(error) >= {"error", "message"} and error["error"] in ("bad_request", "invalid_parameters")


# ---------------------------------------------------------------- fuzzing
def _strategy(operation, mode: GenerationMode, live: Live):
    """The operation's cases, half of them on the seeded jobs' ids when it takes a job id."""
    names = {p.name for p in operation.path_parameters}
    if "job_id" not in names:
        return operation.as_strategy(generation_mode=mode)
    ids = [live.completed, live.failed, live.queued]
    fixed = [{"job_id": i} for i in ids]
    if "task_id" in names:
        fixed = [{"job_id": i, "task_id": make_task_id(i, s, n)} for i in ids for s in (1, 2) for n in (0, 1)]
    return st.one_of(operation.as_strategy(generation_mode=mode),
                     *[operation.as_strategy(generation_mode=mode, path_parameters=f) for f in fixed])


def not_a_server_error_but_no_catalogue(ctx, response, case):
    """not_a_server_error, except the documented 503 not_configured of the catalogue (none on this host)."""
    if response.status_code == 503 and case.path.endswith("/catalog/items"):
        assert response.json()["error"] == "not_configured", response.text
        return None
    return not_a_server_error(ctx, response, case)


def negative_data_rejected_or_too_large(ctx, response, case):
    """negative_data_rejection, also taking the documented 413 payload_too_large as a rejection (a generated
    body of over MAX_REQUEST_BYTES is refused for its size before its fields are read)."""
    if response.status_code == 413:
        assert response.json()["error"] == "payload_too_large", response.text
        return None
    return negative_data_rejection(ctx, response, case)


def _fuzz(live: Live, method: str, path: str, mode: GenerationMode, examples: int) -> None:
    schema = schemathesis.openapi.from_url(f"{live.host.url}/openapi.json")
    operation = schema[path][method]
    session = requests.Session()
    replace = {not_a_server_error: not_a_server_error_but_no_catalogue,
               negative_data_rejection: negative_data_rejected_or_too_large}
    checks = [replace.get(c, c) for c in CHECKS]

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=_strategy(operation, mode, live))
    def run(case):
        case.call_and_validate(session=session, checks=checks, timeout=30)

    run()


@pytest.mark.e2e
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_operation(live, method, path, mode):
    _fuzz(live, method, path, mode, examples=25)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_operation_long(live, method, path, mode):
    _fuzz(live, method, path, mode, examples=150)

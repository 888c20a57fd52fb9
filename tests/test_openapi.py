"""The OpenAPI document: valid 3.1, complete against the function index, and fuzzed against a live host.

Fuzzing is schemathesis (property-based, on hypothesis) over every operation of the served document, in
positive mode (requests the document allows) and negative mode (requests it forbids), against a real local
host over a private Azurite. Checks: no 5xx, every status code documented, the content type and the body
match the documented schema, and negative requests are rejected with a 4xx. Path ids are drawn partly from
jobs seeded first (completed, failed, queued), so 200/202/409 answers are reached, not only 404s.
"""
from __future__ import annotations

import fnmatch
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import pytest
import requests
import schemathesis
from conftest import fresh_settings, settings_env
from host_proc import HostProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

import openapi
from controller_factory import JOB_TYPES
from models import make_task_id
from repositories import Repositories

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
# Not fuzzed, on purpose: nothing. Not checked: `ignored_auth` (function keys are not enforced by local hosts,
# only in Azure), `positive_data_acceptance` (a valid-looking id of a job that does not exist is rightly 404).
OPERATIONS = [(method.upper(), path) for path, item in openapi.document("http://x")["paths"].items()
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
    document: dict = field(default_factory=dict)

    @property
    def base(self) -> str:
        """scheme://host:port."""
        return self.host.url.removesuffix("/api")

    def request_schema(self, path: str) -> jsonschema.Draft202012Validator:
        """Validator of the request body of the POST at ``path``, as the served document says."""
        schema = self.document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return jsonschema.Draft202012Validator({**schema, "components": self.document["components"]})


def _submit(url: str, job_type: str, params: dict) -> str:
    r = requests.post(f"{url}/jobs/submit/{job_type}", json=params, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def _wait(url: str, job_id: str, want: str, timeout: float = 60) -> None:
    deadline, body = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/jobs/status/{job_id}", timeout=10).json()
        if body["status"] == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not {want} after {timeout}s: {body}")


@pytest.fixture(scope="module")
def live(azurite, tmp_path_factory):
    """Seed a completed and a failed job with a full host, then serve HTTP only (new jobs stay queued)."""
    env = fresh_settings(azurite.connection_string, retry_base_delay_s=0)
    Repositories(env).ensure()
    tmp = tmp_path_factory.mktemp("openapi")
    full = HostProcess(settings_env(env), tmp / "seed.log").start()
    try:
        completed = _submit(full.url, "hello_world", {"n": 2, "message": "seed"})
        failed = _submit(full.url, "hello_world", {"n": 2, "message": "seed", "fail_indices": [1]})
        _wait(full.url, completed, "completed")
        _wait(full.url, failed, "failed")
    finally:
        full.stop()
    printed = (tmp / "seed.out").read_text().splitlines()
    routes = [m.groups() for m in map(HTTP_ROUTE.match, printed) if m]
    host = HostProcess(settings_env(env), tmp / "http.log", functions=[name for _, _, name in routes]).start()
    try:
        queued = _submit(host.url, "hello_world", {"n": 1, "message": "queued"})
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
            assert operation["security"] == served["security"] == openapi.SECURITY
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


# ---------------------------------------------------------------- API bugs the fuzzer found, not fixed yet
# Each has a predicate (the fuzzer meets it: the case is not judged, every other case still is) and replays
# (exact requests, with what a fixed API answers): test_known_api_bug xfails while the bug is there.
def _query(response) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(response.request.url).query, keep_blank_values=True))


def _number(text: str) -> float | None:
    try:
        return float(text or "0")
    except ValueError:
        return None


def _metrics_window_crash(case, response, live: Live) -> bool:
    window = _number(_query(response).get("window_s", ""))
    return response.status_code == 500 and (window is None or not math.isfinite(window) or abs(window) > 6e10)


def _stuck_not_finite(case, response, live: Live) -> bool:
    older = _number(_query(response).get("older_than_s", ""))
    return response.status_code == 200 and older is not None and not math.isfinite(older)


def _status_ignores_query(case, response, live: Live) -> bool:
    query = _query(response)
    verbose, limit = query.get("verbose", "").lower(), query.get("limit", "")
    bad_limit = limit != "" and not (limit.strip().isdigit() and 1 <= int(limit) <= 1000)
    return response.status_code == 200 and (verbose not in ("", "true", "false") or verbose != "true" and bad_limit)


def _lax_body(case, response, live: Live) -> bool:
    if not (case.meta and case.meta.is_negative_at(ParameterLocation.BODY) and response.status_code in (200, 202)):
        return False
    status = requests.get(f"{live.host.url}/jobs/status/{response.json()['job_id']}", timeout=30).json()
    return live.request_schema(case.operation.path).is_valid(status["parameters"])


@dataclass(frozen=True)
class KnownBug:
    """An API bug: what is wrong, how the fuzzer meets it, and requests that show it."""

    reason: str
    operation: str
    matches: Callable[..., bool]
    replays: tuple[tuple[str, str, str | None, tuple[int, ...]], ...]  # method, path, body, fixed statuses


KNOWN_BUGS = {
    "metrics_window": KnownBug(
        "metrics: window_s that is not a number, not finite or too large for a timedelta is a 500, not a 400",
        "GET /api/metrics", _metrics_window_crash,
        (("GET", "/metrics?window_s=abc", None, (400,)), ("GET", "/metrics?window_s=nan", None, (400,)),
         ("GET", "/metrics?window_s=1e300", None, (200, 400)))),
    "stuck_not_finite": KnownBug(
        "stuck: older_than_s=nan/inf is a 200 whose body has NaN/Infinity, which is not JSON",
        "GET /api/jobs/stuck", _stuck_not_finite,
        (("GET", "/jobs/stuck?older_than_s=nan", None, (400,)), ("GET", "/jobs/stuck?older_than_s=inf", None, (400,)))),
    "status_ignores_query": KnownBug(
        "status: verbose that is not a boolean is read as false, and limit is not checked unless verbose=true",
        "GET /api/jobs/status/{job_id}", _status_ignores_query,
        (("GET", "/jobs/status/{job_id}?verbose=maybe", None, (400,)),
         ("GET", "/jobs/status/{job_id}?limit=0", None, (400,)))),
    "lax_body": KnownBug(
        "submit: parameters are validated in pydantic's lax mode, so values of the wrong JSON type that it can "
        "coerce are accepted (\"3\" or 3.0 for an integer, a number for a date-time)",
        "POST /api/jobs/submit/*", _lax_body,
        (("POST", "/jobs/submit/hello_world", '{"n": "3"}', (400,)),
         ("POST", "/jobs/submit/sync_container", '{"datetime": 1700000000}', (400,)))),
    "deep_json": KnownBug(
        "submit: a deeply nested JSON body makes json.loads raise RecursionError: 500, not 400",
        "POST /api/jobs/submit/*", lambda case, response, live: False,  # hypothesis does not nest 100,000 deep
        (("POST", "/jobs/submit/hello_world", "[" * 100_000, (400,)),)),
}
REPLAYS = [(name, *replay) for name, bug in KNOWN_BUGS.items() for replay in bug.replays]


def _known_bug(case, response, live: Live) -> str | None:
    operation = f"{case.method} {case.operation.path}"
    for name, bug in KNOWN_BUGS.items():
        if fnmatch.fnmatch(operation, bug.operation) and bug.matches(case, response, live):
            return name
    return None


@pytest.mark.parametrize(("name", "method", "path", "body", "fixed"), REPLAYS,
                         ids=[f"{r[0]}-{r[1]} {r[2][:40]}" for r in REPLAYS])
def test_known_api_bug(live, name, method, path, body, fixed):
    r = requests.request(method, live.host.url + path.format(job_id=live.completed), data=body, timeout=30)
    try:
        json.loads(r.text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        strict_json = True
    except ValueError:
        strict_json = False
    if r.status_code not in fixed or not strict_json:
        pytest.xfail(f"{name}: {KNOWN_BUGS[name].reason} ({method} {path} -> {r.status_code} {r.text[:120]})")


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


def _fuzz(live: Live, method: str, path: str, mode: GenerationMode, examples: int) -> None:
    schema = schemathesis.openapi.from_url(f"{live.host.url}/openapi.json")
    operation = schema[path][method]
    session = requests.Session()
    met: set[str] = set()

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=_strategy(operation, mode, live))
    def run(case):
        response = case.call(session=session, timeout=30)
        known = _known_bug(case, response, live)
        if known:
            met.add(known)
            return
        case.validate_response(response, checks=CHECKS)

    run()
    if met:
        print(f"{method} {path} ({mode}): met known API bugs {sorted(met)} (see test_known_api_bug)")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_operation(live, method, path, mode):
    _fuzz(live, method, path, mode, examples=25)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_operation_long(live, method, path, mode):
    _fuzz(live, method, path, mode, examples=300)

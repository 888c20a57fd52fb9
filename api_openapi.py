"""OpenAPI 3.1 document of the HTTP API, generated from the API models and the job-type registry.

``document(base_url)`` is what GET /api/openapi.json serves. Every HTTP route of ``function_app.py`` is
here. Submission is one path per job type (``/api/jobs/submit/hello_world``, ...), each with that type's
parameters model as its request body, so clients and fuzzers see what each type takes; the templated
route they share is left out. Bodies that the API builds as plain dicts (health, metrics, stuck jobs) are
described by the small models below.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from api_models import (
    Deleted,
    ErrorBody,
    JobPage,
    JobStatusResponse,
    JobTypes,
    ScheduleList,
    ScheduleRequest,
    ScheduleView,
    SubmitResponse,
    TaskPage,
    TaskView,
    WatchList,
    WatchRequest,
    WatchView,
)
from api_dashboard import ItemFootprints
from api_sign import HrefRequest, SignedHref, StacItem, StacItemCollection
from api_dashboard import files as dashboard_files
from config import APP_VERSION, load_host_json
from engine_jobs import job_types
from errors import ErrorCode
from models import Status

VERSION = APP_VERSION
REF = "#/components/schemas/{model}"
JSON = "application/json"
SECURITY = [{"functionKeyHeader": []}, {"functionKeyQuery": []}]


# ---------------------------------------------------------------- bodies built as dicts
class Check(BaseModel):
    """One probed part: ok, else the error; parts may add details (queue depths, items checked)."""

    model_config = ConfigDict(extra="allow")
    ok: bool
    error: str | None = None


class Health(BaseModel):
    """Body of GET /api/health (200 healthy, 503 unhealthy)."""

    status: Literal["healthy", "unhealthy"]
    failing: list[str] = Field(description="names of the failing checks")
    checks: dict[str, Check]
    queues: dict[str, int] = Field(description="approximate message count per queue")
    versions: dict[str, str] = Field(description="Python, GDAL and package versions")


class Percentiles(BaseModel):
    """Durations of completed tasks, seconds (null without any)."""

    p50: float | None
    p95: float | None
    p99: float | None


class TaskTypeMetrics(BaseModel):
    """One task type over the jobs updated in the window."""

    count: int
    completed: int
    failed: int
    failure_rate: float = Field(ge=0, le=1)
    failures_by_code: dict[ErrorCode, int] = Field(default_factory=dict, description="failed tasks by error_code")
    duration_s: Percentiles


class JobCounts(BaseModel):
    """Every job, by status and by type."""

    by_status: dict[str, int]
    by_type: dict[str, int]


class Metrics(BaseModel):
    """Body of GET /api/metrics."""

    window_s: float
    jobs_in_window: int
    jobs: JobCounts
    task_types: dict[str, TaskTypeMetrics]
    failures_by_code: dict[ErrorCode, int] = Field(default_factory=dict, description="failed tasks of every type "
                                                   "in the window, by error_code")
    queues: dict[str, int]


class StuckJobs(JobPage):
    """Body of GET /api/jobs/stuck: processing jobs idle for at least ``older_than_s``."""

    older_than_s: float


# ---------------------------------------------------------------- parameters
def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    if where == "path":
        return {"name": name, "in": where, "required": True, "schema": schema, "description": description}
    # The API reads an empty query parameter (?status=) as one not given, which is what allowEmptyValue says.
    return {"name": name, "in": where, "schema": schema, "description": description, "allowEmptyValue": True}


def _limit(default: int, what: str = "") -> dict[str, Any]:
    return _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": default},
                  f"page size {what}".strip())


JOB_ID = _param("job_id", "path", {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "job id: SHA-256 hex of the job type and its canonical parameters")
TASK_ID = _param("task_id", "path", {"type": "string", "pattern": r"^[0-9a-f]{12}-s[0-9]{2}-t[0-9]{6}$"},
                 "task id: <first 12 hex of the job id>-s<stage>-t<index>")
STATUS = _param("status", "query", {"type": "string", "enum": [s.value for s in Status]}, "only this status")
STAGE = _param("stage", "query", {"type": "integer", "minimum": 1, "maximum": 99}, "only this stage")
CONTINUATION = _param("continuation", "query", {"type": "string"},
                      "the 'continuation' of the previous page (opaque)")
VERBOSE = _param("verbose", "query", {"anyOf": [{"type": "boolean"}, {"enum": ["1", "0", "yes", "no"]}],
                                      "default": False}, "true: add a page of the job's tasks")
FULL = _param("full", "query", {"anyOf": [{"type": "boolean"}, {"enum": ["1", "0", "yes", "no"]}], "default": False},
              "true: the task's cut texts (listed in 'cut') whole, read from where they are kept")
JOB_TYPE = _param("job_type", "query", {"type": "string", "enum": sorted(job_types())}, "only this job type")
OLDER_THAN = _param("older_than_s", "query", {"type": "number", "minimum": 0, "maximum": 10 * 365 * 86400,
                                               "default": 600}, "idle for at least this many seconds")
WINDOW = _param("window_s", "query", {"type": "number", "minimum": 1, "maximum": 30 * 86400, "default": 3600},
                "task metrics over jobs updated in the last window_s seconds")
CALLBACK = _param("callback_url", "query", {"type": "string", "format": "uri"},
                  "where the final status is POSTed, signed (needs WEBHOOK_SECRET); not part of the job's identity")

# ---------------------------------------------------------------- responses
ERRORS = {
    400: "invalid request: body not a JSON object, invalid parameters (see 'errors'), or a bad query parameter",
    404: "no such job or task (or route)",
    409: "the job is in the wrong state for this action",
    413: "request body too large, or parameters too large to store",
    503: "storage (or the database) is unavailable; retry later",
}


def _body(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": REF.format(model=model)}}}}


def _operation(operation_id: str, summary: str, ok: dict[int, tuple[str, str]], errors: tuple[int, ...] = (),
               params: tuple[dict[str, Any], ...] = (), tag: str = "jobs", **extra: Any) -> dict[str, Any]:
    responses = {str(code): _body(model, text) for code, (model, text) in ok.items()}
    responses.update({str(code): _body("ErrorBody", ERRORS[code]) for code in errors})
    return {"operationId": operation_id, "summary": summary, "tags": [tag], "parameters": list(params),
            "responses": responses, "security": SECURITY, **extra}


def _submit(job_type: str) -> dict[str, Any]:
    controller = job_types()[job_type]
    stages = "; ".join(f"{i}. {s.name} ({s.parallelism})" for i, s in enumerate(controller.stages, start=1))
    body = {"required": True, "description": "the job's parameters as a JSON object ({} for every default)",
            "content": {JSON: {"schema": {"$ref": REF.format(model=controller.parameters_model.__name__)}}}}
    operation = _operation(
        f"submit_{job_type}", f"Submit a {job_type} job",
        {202: ("SubmitResponse", "a new job, queued"), 200: ("SubmitResponse", "the same job already exists")},
        (400, 404, 413, 503), (CALLBACK,), description=f"{controller.description}\n\nStages: {stages}.",
        requestBody=body)
    operation["responses"]["404"]["description"] = "an identical job created at the same moment is not readable yet"
    return operation


def _resource(kind: str, plural: str, model: str, what: str, conflict: bool = False) -> dict[str, dict[str, Any]]:
    """The four operations of schedules or watches (issue #13): create, list, get one, delete one."""
    ident = _param(f"{kind}_id", "path", {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                   f"{kind} id: 16 hex digits of SHA-256 over its definition")
    body = {"required": True, "description": f"the {kind}'s definition",
            "content": {JSON: {"schema": {"$ref": REF.format(model=f"{model}Request")}}}}
    create = _operation(f"create_{kind}", f"Create a {kind}: {what}",
                        {201: (f"{model}View", f"a new {kind}"), 200: (f"{model}View", f"the same {kind} exists")},
                        (400, 413, 503), tag="triggers", requestBody=body)
    create["responses"]["400"]["description"] = ("the definition names something invalid (see 'errors': the field "
                                                 "and the problem)")
    get_one = _operation(f"get_{kind}", f"One {kind}", {200: (f"{model}View", f"the {kind}")}, (404, 503), (ident,),
                         tag="triggers")
    delete = _operation(f"delete_{kind}", f"Delete a {kind}", {200: ("Deleted", "deleted")},
                        (404, 409, 503) if conflict else (404, 503), (ident,), tag="triggers")
    for operation in (get_one, delete):
        operation["responses"]["404"]["description"] = f"no such {kind}"
    if conflict:
        delete["responses"]["409"]["description"] = "the watch is defined in the WATCHES setting"
    return {
        plural: {"post": create, "get": _operation(f"list_{plural}", f"Every {kind}",
                                                   {200: (f"{model}List", f"the {plural}")}, (503,), tag="triggers")},
        f"{plural}/{{{kind}_id}}": {"get": get_one, "delete": delete},
    }


def _dashboard(prefix: str) -> dict[str, dict[str, Any]]:
    """The dashboard's page and files, and the catalogue items its map draws (issue #13)."""
    file = _param("file", "path", {"type": "string", "enum": sorted({"index.html", *dashboard_files()})},
                  "a file of the dashboard; index.html is the page (also served at /api/dashboard/)")
    text = {"schema": {"type": "string"}}
    page = _operation(
        "dashboard", "The dashboard: a web page (open /api/dashboard/?code=<function key>) and its files", {}, (),
        (file,), tag="dashboard", description="The page inlines its script and style (one request behind a function "
        "key); its script sends the key as x-functions-key. Every file has an ETag (If-None-Match: 304).",
        responses={"200": {"description": "the page or the file", "content": {
            "text/html": text, "text/javascript": text, "text/css": text, "text/plain": text,
            JSON: {"schema": {"type": "object"}}}},
            "404": _body("ErrorBody", "no such file of the dashboard")})
    collection = _param("collection", "query", {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                                "maxLength": 200}, "only this collection (default: every one)")
    items = _operation("catalog_items", "Catalogued items' footprints, as GeoJSON (the dashboard's map)",
                       {200: ("ItemFootprints", "a GeoJSON FeatureCollection")}, (400, 503),
                       (collection, _limit(100, "(items)")), tag="dashboard")
    items["responses"]["503"]["description"] = ("no STAC catalogue is configured ('not_configured': set PGSTAC_HOST), "
                                                "or the database is unavailable")
    return {f"{prefix}/dashboard/{{file}}": {"get": page}, f"{prefix}/catalog/items": {"get": items}}


def _sign(prefix: str) -> dict[str, dict[str, Any]]:
    """Read links for catalogue readers (issue #15): GET ?href= and POST an href, item or item collection."""
    refused = ("not an href object, a STAC Item or an ItemCollection (see 'errors'), or an href that is not a blob "
               "of the app's job containers ('allowed_containers' names them)")
    href = {"name": "href", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
            "description": "a plain blob URL in one of the app's job containers"}
    get = _operation("sign_href", "A read link (SAS) for one blob URL of the app's containers",
                     {200: ("SignedHref", "the signed URL and its expiry")}, (400, 503), (href,), tag="catalogue")
    kinds = [{"$ref": REF.format(model=m.__name__)} for m in (HrefRequest, StacItem, StacItemCollection)]
    post = _operation(
        "sign", "An href, a STAC item or an item collection, with every asset href signed", {}, (400, 413, 503),
        tag="catalogue", description="The pystac-client modifier of docs/api.md posts each search page here. "
        "Each signed href gets `expires_at` beside it (SAS_TTL_MINUTES from now).",
        requestBody={"required": True, "content": {JSON: {"schema": {"anyOf": kinds}}}})
    post["responses"]["200"] = {"description": "the same, signed", "content": {JSON: {"schema": {"anyOf": [
        {"$ref": REF.format(model="SignedHref")}, *kinds[1:]]}}}}
    for operation in (get, post):
        operation["responses"]["400"]["description"] = refused
    return {f"{prefix}/sign": {"get": get, "post": post}}


def _paths(prefix: str) -> dict[str, dict[str, Any]]:
    status_ok = {200: ("JobStatusResponse", "the job's status")}
    paths: dict[str, dict[str, Any]] = {
        f"{prefix}/jobs/submit/{job_type}": {"post": _submit(job_type)} for job_type in sorted(job_types())}
    paths.update({
        f"{prefix}/jobs/status/{{job_id}}": {"get": _operation(
            "job_status", "A job's status, stages, progress, task counts, result or error", status_ok,
            (400, 404, 503), (JOB_ID, VERBOSE, _limit(100, "of the tasks, with verbose=true"), CONTINUATION))},
        f"{prefix}/jobs": {"get": _operation(
            "list_jobs", "Jobs, newest first", {200: ("JobPage", "a page of jobs")}, (400, 503),
            (STATUS, JOB_TYPE, _limit(50), CONTINUATION))},
        f"{prefix}/jobs/stuck": {"get": _operation(
            "stuck_jobs", "Processing jobs without task progress for a while", {200: ("StuckJobs", "stuck jobs")},
            (400, 503), (OLDER_THAN,))},
        f"{prefix}/jobs/{{job_id}}/tasks": {"get": _operation(
            "list_tasks", "A job's tasks", {200: ("TaskPage", "a page of tasks")}, (400, 404, 503),
            (JOB_ID, STAGE, STATUS, _limit(100), CONTINUATION), tag="tasks")},
        f"{prefix}/jobs/{{job_id}}/tasks/{{task_id}}": {"get": _operation(
            "get_task", "One task", {200: ("TaskView", "the task")}, (400, 404, 503), (JOB_ID, TASK_ID, FULL),
            tag="tasks")},
        f"{prefix}/jobs/{{job_id}}/retry": {"post": _operation(
            "retry_job", "Re-run a failed job's failed tasks", {202: ("JobStatusResponse", "retrying")},
            (404, 409, 503), (JOB_ID,))},
        f"{prefix}/jobs/{{job_id}}/cancel": {"post": _operation(
            "cancel_job", "Cancel a job", {200: ("JobStatusResponse", "cancelled")}, (404, 409, 503), (JOB_ID,))},
        f"{prefix}/job-types": {"get": _operation(
            "job_types", "Every job type: description, stages, parameters as JSON Schema",
            {200: ("JobTypes", "the job types")}, tag="system")},
        f"{prefix}/health": {"get": _operation(
            "health", "Storage (and database) health, queue depths, versions", {}, tag="system",
            responses={"200": _body("Health", "healthy"), "503": {
                "description": "unhealthy (see 'failing'), or storage unreachable before the checks ran",
                "content": {JSON: {"schema": {"anyOf": [{"$ref": REF.format(model="Health")},
                                                        {"$ref": REF.format(model="ErrorBody")}]}}}}})},
        f"{prefix}/metrics": {"get": _operation(
            "metrics", "Jobs by status and type, task-type durations and failure rates, queue depths",
            {200: ("Metrics", "the metrics")}, (400, 503), (WINDOW,), tag="system")},
        f"{prefix}/openapi.json": {"get": _operation(
            "openapi", "This document", {}, tag="system", responses={"200": {
                "description": "the OpenAPI 3.1 document", "content": {JSON: {"schema": {"type": "object"}}}}})},
    })
    paths.update(_dashboard(prefix))
    paths.update(_sign(prefix))
    triggers = {**_resource("schedule", "schedules", "Schedule", "a job type, its parameters and an NCRONTAB "
                            "expression; each due slot starts one job"),
                **_resource("watch", "watches", "Watch", "each new or changed raster blob under a container and "
                            "prefix starts one job", conflict=True)}
    paths.update({f"{prefix}/{relative}": item for relative, item in triggers.items()})
    return paths


def _schemas() -> dict[str, Any]:
    """Every body's JSON Schema under its model's name: requests in validation mode, responses as sent."""
    requests = sorted({c.parameters_model for c in job_types().values()}, key=lambda m: m.__name__)
    requests += [ScheduleRequest, WatchRequest, HrefRequest, StacItem, StacItemCollection]
    responses = (SubmitResponse, JobStatusResponse, JobPage, StuckJobs, TaskPage, TaskView, JobTypes, Health,
                 Metrics, ErrorBody, ScheduleView, ScheduleList, WatchView, WatchList, Deleted, ItemFootprints,
                 SignedHref)
    _, top = models_json_schema([(m, "validation") for m in requests] + [(m, "serialization") for m in responses],
                                ref_template=REF)
    return top["$defs"]


def document(base_url: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document, with ``base_url`` (scheme://host[:port]) as its server."""
    prefix = load_host_json().get("extensions", {}).get("http", {}).get("routePrefix", "api").strip("/")
    return {
        "openapi": "3.1.0",
        "info": {"title": "geoetl orchestrator", "version": VERSION, "description": (
            "Jobs -> stages -> parallel tasks over Azure Table Storage and queues. Submitting the same job type "
            "with the same (canonical) parameters returns the same job. Every error body is ErrorBody "
            "({error, message, optional available, errors}). Function keys (x-functions-key header or ?code=) "
            "are required in Azure, not by the local hosts.")},
        "servers": [{"url": base_url}],
        "tags": [{"name": "jobs"}, {"name": "tasks"}, {"name": "system"}, {"name": "triggers"}, {"name": "dashboard"},
                 {"name": "catalogue"}],
        "paths": _paths(f"/{prefix}" if prefix else ""),
        "components": {"schemas": _schemas(), "securitySchemes": {
            "functionKeyHeader": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
            "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"}}},
        "security": SECURITY,
    }

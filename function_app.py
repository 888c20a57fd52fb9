"""Azure Functions v2 app: triggers only (parse -> call -> respond/log); the work is elsewhere.

Queue names come from app settings (``%JOBS_QUEUE%``, ``%TASKS_QUEUE%``); the storage connection is
the setting ``AzureWebJobsStorage`` (a connection string, or ``AzureWebJobsStorage__*`` identity-based
settings). ``func start`` runs this file unchanged; ``local_host.py`` serves it where Core Tools are absent.
"""
from __future__ import annotations

import json
import logging
import threading
from urllib.parse import urlsplit

import azure.functions as func

import api_dashboard
import api_listing
import api_triggers
import api_sign
import api_system
import api_jobs
from config import JOBS_QUEUE_SETTING, STORAGE_CONNECTION, TASKS_QUEUE_SETTING, get_settings
from logs import log_event
from models import decode_job_message, decode_task_message
from task_manager import Engine

logger = logging.getLogger(__name__)
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

_engine: Engine | None = None
_engine_lock = threading.Lock()


def engine() -> Engine:
    """The process-wide engine, built on first use (so importing this module touches no storage)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = Engine.from_settings(get_settings())
    return _engine


def _http(result: tuple[int, dict]) -> func.HttpResponse:
    code, body = result
    return func.HttpResponse(json.dumps(body), status_code=code, mimetype="application/json")


def _base_url(req: func.HttpRequest) -> str:
    parts = urlsplit(req.url)
    return f"{parts.scheme}://{parts.netloc}"


@app.route(route="jobs/submit/{job_type}", methods=["POST"])
def submit_job(req: func.HttpRequest) -> func.HttpResponse:
    """Submit a job: 202 new, 200 existing, 4xx with a JSON body naming the problem.

    ``?callback_url=`` (not part of the job's identity): where the final status is POSTed, signed.
    """
    return _http(api_jobs.respond(lambda: api_jobs.submit(
        engine(), req.route_params.get("job_type", ""), req.get_body(), _base_url(req),
        callback_url=req.params.get("callback_url"))))


@app.route(route="jobs/status/{job_id}", methods=["GET"])
def job_status(req: func.HttpRequest) -> func.HttpResponse:
    """A job's status, stages, progress, task counts, its result or error; ?verbose=true adds its tasks."""
    q = req.params
    return _http(api_jobs.respond(lambda: api_jobs.status(
        engine(), req.route_params.get("job_id", ""), verbose=api_listing.flag(q.get("verbose"), "verbose"),
        limit=api_listing.limit_of(q.get("limit"), 100), continuation=q.get("continuation"))))


@app.route(route="jobs", methods=["GET"])
def list_jobs(req: func.HttpRequest) -> func.HttpResponse:
    """Jobs, newest first: ?status=&job_type=&limit=&continuation=."""
    q = req.params
    return _http(api_jobs.respond(lambda: api_listing.list_jobs(
        engine(), _base_url(req), q.get("status"), q.get("job_type"), q.get("limit"), q.get("continuation"))))


@app.route(route="jobs/stuck", methods=["GET"])
def stuck_jobs(req: func.HttpRequest) -> func.HttpResponse:
    """Jobs processing with no task progress for longer than ?older_than_s= (default 600)."""
    return _http(api_jobs.respond(lambda: api_listing.stuck_jobs(engine(), _base_url(req),
                                                                req.params.get("older_than_s"))))


@app.route(route="jobs/{job_id}/tasks", methods=["GET"])
def list_tasks(req: func.HttpRequest) -> func.HttpResponse:
    """A job's tasks: ?stage=&status=&limit=&continuation=."""
    q = req.params
    return _http(api_jobs.respond(lambda: api_listing.list_tasks(
        engine(), req.route_params.get("job_id", ""), q.get("stage"), q.get("status"), q.get("limit"),
        q.get("continuation"))))


@app.route(route="jobs/{job_id}/tasks/{task_id}", methods=["GET"])
def get_task(req: func.HttpRequest) -> func.HttpResponse:
    """One task: status, attempts, timings, error, parameters and result (large ones by reference; long texts
    cut, whole with ?full=true)."""
    return _http(api_jobs.respond(lambda: api_listing.get_task(
        engine(), req.route_params.get("job_id", ""), req.route_params.get("task_id", ""), req.params.get("full"))))


@app.route(route="job-types", methods=["GET"])
def job_types(req: func.HttpRequest) -> func.HttpResponse:
    """Every job type: description, stages, parameters as JSON Schema."""
    return _http(api_jobs.respond(api_listing.job_types))


@app.route(route="health", methods=["GET"])
def health(req: func.HttpRequest) -> func.HttpResponse:
    """200 when storage (and the database) answer; 503 naming the failing part."""
    return _http(api_jobs.respond(lambda: api_system.health(engine())))


@app.route(route="openapi.json", methods=["GET"])
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    """The OpenAPI 3.1 document of this API, generated from the models and the job-type registry."""
    import api_openapi

    return _http(api_jobs.respond(lambda: (200, api_openapi.document(_base_url(req)))))


@app.route(route="metrics", methods=["GET"])
def metrics(req: func.HttpRequest) -> func.HttpResponse:
    """Jobs by status and type; per task type: count, failure rate, duration percentiles; queue depths."""
    return _http(api_jobs.respond(lambda: api_system.metrics(engine(), req.params.get("window_s"))))


@app.route(route="jobs/{job_id}/retry", methods=["POST"])
def retry_job(req: func.HttpRequest) -> func.HttpResponse:
    """Re-run a failed job's failed tasks (202); 409 for a job that is not failed."""
    return _http(api_jobs.respond(lambda: api_jobs.retry(engine(), req.route_params.get("job_id", ""))))


@app.route(route="jobs/{job_id}/cancel", methods=["POST"])
def cancel_job(req: func.HttpRequest) -> func.HttpResponse:
    """Cancel a job (200); 409 for a job that already ended."""
    return _http(api_jobs.respond(lambda: api_jobs.cancel(engine(), req.route_params.get("job_id", ""))))


# ------------------------------------------------------------------ jobs that start by themselves (issue #13)
@app.route(route="schedules", methods=["POST"])
def create_schedule(req: func.HttpRequest) -> func.HttpResponse:
    """Create a schedule: 201 new, 200 the same definition exists; 400 naming a bad expression, job type or
    parameter."""
    return _http(api_jobs.respond(lambda: api_triggers.create_schedule(engine(), req.get_body())))


@app.route(route="schedules", methods=["GET"])
def list_schedules(req: func.HttpRequest) -> func.HttpResponse:
    """Every schedule, with its next slot and what became of its latest one."""
    return _http(api_jobs.respond(lambda: api_triggers.list_schedules(engine())))


@app.route(route="schedules/{schedule_id}", methods=["GET"])
def get_schedule(req: func.HttpRequest) -> func.HttpResponse:
    """One schedule."""
    return _http(api_jobs.respond(lambda: api_triggers.get_schedule(engine(),
                                                                     req.route_params.get("schedule_id", ""))))


@app.route(route="schedules/{schedule_id}", methods=["DELETE"])
def delete_schedule(req: func.HttpRequest) -> func.HttpResponse:
    """Delete a schedule (the jobs it started are left alone)."""
    return _http(api_jobs.respond(lambda: api_triggers.delete_schedule(engine(),
                                                                        req.route_params.get("schedule_id", ""))))


@app.route(route="watches", methods=["POST"])
def create_watch(req: func.HttpRequest) -> func.HttpResponse:
    """Create a watch: 201 new, 200 the same definition exists; 400 naming a bad container, job type or option."""
    return _http(api_jobs.respond(lambda: api_triggers.create_watch(engine(), req.get_body())))


@app.route(route="watches", methods=["GET"])
def list_watches(req: func.HttpRequest) -> func.HttpResponse:
    """Every watch (created over the API, and from the WATCHES setting)."""
    return _http(api_jobs.respond(lambda: api_triggers.list_watches(engine())))


@app.route(route="watches/{watch_id}", methods=["GET"])
def get_watch(req: func.HttpRequest) -> func.HttpResponse:
    """One watch."""
    return _http(api_jobs.respond(lambda: api_triggers.get_watch(engine(), req.route_params.get("watch_id", ""))))


@app.route(route="watches/{watch_id}", methods=["DELETE"])
def delete_watch(req: func.HttpRequest) -> func.HttpResponse:
    """Delete a watch; 409 for one defined in settings."""
    return _http(api_jobs.respond(lambda: api_triggers.delete_watch(engine(), req.route_params.get("watch_id", ""))))


# ------------------------------------------------------------------ the dashboard (issue #13)
@app.route(route="dashboard/{file?}", methods=["GET"])
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """The dashboard page (open /api/dashboard/?code=<function key>) and the files it fetches."""
    asset = api_dashboard.serve(req.route_params.get("file") or "", req.headers.get("If-None-Match"))
    return func.HttpResponse(asset.body, status_code=asset.status, headers=asset.headers,
                             mimetype=asset.content_type.split(";")[0])


@app.route(route="catalog/items", methods=["GET"])
def catalog_items(req: func.HttpRequest) -> func.HttpResponse:
    """Catalogued items' footprints as GeoJSON: ?collection=&limit=; 503 without a catalogue."""
    return _http(api_jobs.respond(lambda: api_dashboard.catalog_items(
        engine(), req.params.get("collection"), req.params.get("limit"))))


@app.route(route="sign", methods=["GET", "POST"])
def sign_links(req: func.HttpRequest) -> func.HttpResponse:
    """Read links for catalogue readers (issue #15): ?href=, or a JSON href object, STAC item or item collection,
    answered with signed asset hrefs and their expiry; 400 for anything outside the job containers."""
    return _http(api_jobs.respond(lambda: api_sign.sign(engine(), req.get_body(), req.params.get("href"))))


@app.event_grid_trigger(arg_name="event")
def blob_arrived(event: func.EventGridEvent) -> None:
    """Event Grid BlobCreated (the storage account's system topic): each watch covering the raster starts one
    job for this blob version; sidecars and other files start nothing. Raises on transient storage errors,
    so Event Grid delivers the event again."""
    engine().triggers.on_blob_event(event.id, event.event_type, event.subject, event.get_json())


@app.timer_trigger(schedule=get_settings().schedules_timer, arg_name="timer", run_on_startup=False)
def run_schedules(timer: func.TimerRequest) -> None:
    """Submit each schedule's due slot once, whatever the number of instances; after downtime only the
    latest missed slot runs."""
    engine().triggers.run_due()


@app.queue_trigger(arg_name="msg", queue_name=f"%{JOBS_QUEUE_SETTING}%", connection=STORAGE_CONNECTION)
def process_job_message(msg: func.QueueMessage) -> None:
    """Jobs queue: run a stage (write its tasks, queue them) or complete a job."""
    message = decode_job_message(msg.get_body())
    log_event(logger, "job_message", job_id=message.job_id, kind=message.kind,
              stage=getattr(message, "stage", None), dequeue_count=getattr(msg, "dequeue_count", None))
    if message.kind == "stage":
        engine().run_stage(message)
    elif message.kind == "complete":
        engine().complete(message)
    else:
        engine().deliver_webhook(message)


@app.queue_trigger(arg_name="msg", queue_name=f"%{TASKS_QUEUE_SETTING}%", connection=STORAGE_CONNECTION)
def process_task_message(msg: func.QueueMessage) -> None:
    """Tasks queue: run one task; the last task of a stage advances the job."""
    message = decode_task_message(msg.get_body())
    engine().run_task(message, dequeue_count=getattr(msg, "dequeue_count", None) or 1)


@app.queue_trigger(arg_name="msg", queue_name=f"%{JOBS_QUEUE_SETTING}%-poison", connection=STORAGE_CONNECTION)
def process_job_poison(msg: func.QueueMessage) -> None:
    """Jobs poison queue: a stage or completion message gave up; the job is failed."""
    engine().on_job_poison(msg.get_body())


@app.queue_trigger(arg_name="msg", queue_name=f"%{TASKS_QUEUE_SETTING}%-poison", connection=STORAGE_CONNECTION)
def process_task_poison(msg: func.QueueMessage) -> None:
    """Tasks poison queue: a task gave up; it is failed with its last error."""
    engine().on_task_poison(msg.get_body())


@app.timer_trigger(schedule=get_settings().sweeper_schedule, arg_name="timer", run_on_startup=False)
def sweeper(timer: func.TimerRequest) -> None:
    """Re-drive what a crash left unfinished (lost advances, unsent first messages, dead leases)."""
    engine().sweep()

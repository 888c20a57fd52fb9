"""Serve a v2 Function App's functions where Azure Functions Core Tools are absent, honouring host.json.

Every binding is read from the app's function objects (the index the real host builds), never from a
second table: HTTP triggers on a threaded server under ``extensions.http.routePrefix``, queue triggers
with the host's ``extensions.queues`` semantics (``local_host_queues``), NCRONTAB timers
(``local_host_timers``), and Event Grid triggers fed with the BlobCreated events of the containers named
in ``LOCAL_HOST_BLOB_EVENTS`` (``local_host_blobs``). Several local hosts may share one storage account,
like scaled-out instances.

    python local_host.py [--app function_app] [--port 7071] [--functions a,b] [--no-timers]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Self

from local_host_blobs import RECEIPTS_TABLE, BlobEventOptions, BlobEventSource
from local_host_http import LocalHttpServer, build_routes
from local_host_queues import QueueOptions, QueuePoller, wake_on_enqueue
from local_host_timers import TimerRunner, parse_schedule, parse_timespan
from local_host_worker import sync_pool

__all__ = ["FunctionBinding", "LocalHost", "LocalHostError", "describe_functions", "load_host_config",
           "main", "parse_timespan", "resolve_settings", "storage_client"]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
LEASE_SETTING = "LOCAL_HOST_LEASE_SECONDS"
_SETTING_REF = re.compile(r"%([^%]+)%")
_QUEUE_NAME = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")


class LocalHostError(Exception):
    """The app or its settings cannot be served as declared."""


def resolve_settings(value: str, function: str, what: str) -> str:
    """Replace each ``%SETTING%`` with its app setting (an environment variable), like the host."""
    def lookup(match: re.Match[str]) -> str:
        if match.group(1) not in os.environ:
            raise LocalHostError(f"function {function}: app setting {match.group(1)!r} (used in {what} "
                                 f"{value!r}) is not set; set the environment variable or local.settings.json")
        return os.environ[match.group(1)]
    return _SETTING_REF.sub(lookup, value)


@dataclass(frozen=True)
class FunctionBinding:
    """One function as the host indexes it: its trigger's settings and the Python callable."""

    name: str
    trigger: Literal["http", "queue", "timer", "event_grid"]
    arg_name: str
    func: Callable[..., Any] = field(repr=False)
    route: str | None = None
    methods: tuple[str, ...] | None = None  # None: every method
    auth_level: str | None = None
    queue_name: str | None = None
    queue_name_raw: str | None = None
    connection: str | None = None
    schedule: str | None = None
    schedule_raw: str | None = None
    run_on_startup: bool = False
    wants_context: bool = False

    def invoke(self, value: Any, invocation_id: str | None = None) -> Any:
        """Call the function with its trigger value by arg name (and ``context`` if it asks); await coroutines."""
        kwargs = {self.arg_name: value}
        if self.wants_context:
            kwargs["context"] = SimpleNamespace(
                invocation_id=invocation_id or str(uuid.uuid4()), function_name=self.name,
                function_directory=str(ROOT), thread_local_storage=threading.local(),
                trace_context=None, retry_context=None)
        if inspect.iscoroutinefunction(self.func):
            return asyncio.run(self.func(**kwargs))
        return sync_pool().submit(self.func, **kwargs).result()

    def describe(self, route_prefix: str = "api") -> str:
        """One line like ``func start`` prints for the function."""
        if self.trigger == "http":
            path = "/".join(p for p in (route_prefix.strip("/"), (self.route or "").strip("/")) if p)
            return f"http  {','.join(self.methods) if self.methods else 'ALL'} /{path}  -> {self.name}"
        if self.trigger == "queue":
            return f"queue {self.queue_name} ({self.connection}) -> {self.name}"
        if self.trigger == "event_grid":
            containers = os.environ.get("LOCAL_HOST_BLOB_EVENTS") or "(none: set LOCAL_HOST_BLOB_EVENTS)"
            return f"event grid BlobCreated of containers {containers} -> {self.name}"
        startup = ", run on startup" if self.run_on_startup else ""
        return f"timer {self.schedule} (UTC{startup}) -> {self.name}"


def _binding(fn: Any) -> FunctionBinding:
    name = fn.get_function_name()
    raw = [json.loads(b) for b in fn.get_raw_bindings()]
    trigger = next((b for b in raw if b.get("type", "").endswith("Trigger")), None)
    if trigger is None:
        raise LocalHostError(f"function {name} has no trigger")
    others = [b for b in raw if b is not trigger and not (b.get("type") == "http" and trigger["type"] == "httpTrigger")]
    if others:
        kinds = ", ".join(f"{b.get('type')} {b.get('direction', '')} {b.get('name')!r}" for b in others)
        raise LocalHostError(f"function {name}: bindings other than the trigger are not supported here: {kinds}")
    user = fn.get_user_function()
    params = inspect.signature(user).parameters
    if trigger["name"] not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise LocalHostError(f"function {name} has no parameter {trigger['name']!r} for its trigger")
    unbound = [p.name for p in params.values() if p.name not in (trigger["name"], "context")
               and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if unbound:
        raise LocalHostError(f"function {name}: parameters {unbound} are bound to nothing")
    common = {"name": name, "arg_name": trigger["name"], "func": user, "wants_context": "context" in params}
    kind = trigger["type"]
    if kind == "httpTrigger":
        methods = trigger.get("methods")
        return FunctionBinding(trigger="http", route=trigger.get("route") or name,
                               methods=tuple(str(m).upper() for m in methods) if methods else None,
                               auth_level=str(trigger.get("authLevel") or "function").lower(), **common)
    if kind == "queueTrigger":
        queue = resolve_settings(trigger["queueName"], name, "queueName")
        if not _QUEUE_NAME.match(queue):
            raise LocalHostError(f"function {name}: {queue!r} is not a valid queue name "
                                 "(3-63 lowercase letters, digits and single hyphens)")
        return FunctionBinding(trigger="queue", queue_name=queue, queue_name_raw=trigger["queueName"],
                               connection=trigger.get("connection") or "AzureWebJobsStorage", **common)
    if kind == "timerTrigger":
        schedule = resolve_settings(trigger["schedule"], name, "schedule")
        try:
            parse_schedule(schedule)
        except ValueError as exc:
            raise LocalHostError(f"function {name}: {exc}") from exc
        return FunctionBinding(trigger="timer", schedule=schedule, schedule_raw=trigger["schedule"],
                               run_on_startup=bool(trigger.get("runOnStartup")), **common)
    if kind == "eventGridTrigger":
        return FunctionBinding(trigger="event_grid", **common)
    raise LocalHostError(f"function {name}: trigger type {kind!r} is not supported (http, queue, timer, "
                         "eventGrid are)")


def describe_functions(app: Any) -> list[FunctionBinding]:
    """The app's functions with their resolved trigger settings; calls ``app.get_functions()`` (once per app)."""
    try:
        functions = app.get_functions()
    except ValueError as exc:  # azure.functions remembers names: a second call sees "duplicates"
        raise LocalHostError(f"{exc} (if the names are unique: get_functions() works once per app object, "
                             "and it was already called)") from exc
    return [_binding(fn) for fn in functions]


def load_host_config(path: str | Path = ROOT / "host.json") -> dict[str, Any]:
    """host.json as a dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_local_settings(path: str | Path) -> int:
    """Copy ``Values`` of a local.settings.json into the environment (set variables win); count added."""
    values = json.loads(Path(path).read_text(encoding="utf-8")).get("Values", {})
    added = [k for k in values if k not in os.environ]
    for key in added:
        os.environ[key] = str(values[key])
    return len(added)


def storage_client(connection: str, service: Literal["queue", "blob", "table"]) -> Any:
    """A service client for a binding's ``connection``, resolved like the host.

    ``AzureWebJobs<name>`` then ``<name>``: a connection string (``UseDevelopmentStorage=true`` too), or
    identity-based ``<name>__<service>ServiceUri`` / ``<name>__accountName`` with DefaultAzureCredential
    (``<name>__clientId`` picks a user-assigned managed identity).
    """
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    session = requests.Session()
    for scheme in ("http://", "https://"):  # one connection per concurrent invocation, not urllib3's 10
        session.mount(scheme, requests.adapters.HTTPAdapter(pool_maxsize=64))
    # The SDK's default retries wait 15 s and more: a poller would stall long after storage is back;
    # here a call gives up after about 2 s, and the poller's own back-off takes over.
    options: dict[str, Any] = {"transport": RequestsTransport(session=session)}
    if service == "table":
        from azure.data.tables import TableServiceClient as Client
        options |= {"retry_total": 2, "retry_backoff_factor": 0.5}
    else:
        if service == "queue":
            from azure.storage.queue import LinearRetry
            from azure.storage.queue import QueueServiceClient as Client
        else:
            from azure.storage.blob import BlobServiceClient as Client
            from azure.storage.blob import LinearRetry
        options["retry_policy"] = LinearRetry(backoff=0.5, retry_total=2, random_jitter_range=0.5)
    for name in (f"AzureWebJobs{connection}", connection):
        if os.environ.get(name):
            return Client.from_connection_string(os.environ[name], **options)
        uri = os.environ.get(f"{name}__{service}ServiceUri")
        account = os.environ.get(f"{name}__accountName")
        if uri or account:
            from azure.identity import DefaultAzureCredential
            credential = DefaultAzureCredential(managed_identity_client_id=os.environ.get(f"{name}__clientId"))
            return Client(uri or f"https://{account}.{service}.core.windows.net", credential=credential, **options)
    raise LocalHostError(f"connection {connection!r} is not configured: set {connection} to a connection string "
                         f"or {connection}__accountName / {connection}__{service}ServiceUri")


def _section(config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        config = next((v for k, v in (config or {}).items() if k.lower() == key.lower()), None)
    return config


class LocalHost:
    """HTTP server, queue pollers and timers for an app's functions, in this process."""

    def __init__(self, app: Any, host_config: dict[str, Any] | None = None, port: int = 7071, *,
                 bind: str = "127.0.0.1", functions: Iterable[str] | None = None, timers: bool = True,
                 lease_seconds: float | None = None) -> None:
        self.host_config = host_config or {}
        self.bindings = describe_functions(app)
        if functions is not None:
            wanted, known = set(functions), {b.name for b in self.bindings}
            if wanted - known:
                raise LocalHostError(f"unknown functions {sorted(wanted - known)}; the app has {sorted(known)}")
            self.bindings = [b for b in self.bindings if b.name in wanted]
        if not timers:
            self.bindings = [b for b in self.bindings if b.trigger != "timer"]
        prefix = _section(self.host_config, "extensions", "http", "routePrefix")
        self.route_prefix = "api" if prefix is None else str(prefix)
        self.queue_options = QueueOptions.from_host_config(self.host_config)
        self.lease_seconds = lease_seconds or float(os.environ.get(LEASE_SETTING, "30"))
        self.bind, self._port = bind, port
        self._server: LocalHttpServer | None = None
        self._pollers: list[QueuePoller] = []
        self._timers: list[TimerRunner] = []
        self._blob_events: list[BlobEventSource] = []

    @property
    def port(self) -> int:
        """The HTTP port (the bound one, once started with port 0)."""
        return self._server.server_address[1] if self._server else self._port

    def describe(self) -> list[str]:
        """One line per served function."""
        return [b.describe(self.route_prefix) for b in self.bindings]

    def start(self) -> Self:
        """Listen for HTTP and start pollers and timers; returns at once."""
        sync_pool()  # a bad PYTHON_THREADPOOL_THREAD_COUNT fails the start, not every invocation
        clients: dict[str, Any] = {}
        for b in self.bindings:
            if b.trigger == "queue" and b.connection:
                if b.connection not in clients:
                    clients[b.connection] = storage_client(b.connection, "queue")
                service = clients[b.connection]
                self._pollers.append(QueuePoller(b, service.get_queue_client(b.queue_name),
                                                 service.get_queue_client(f"{b.queue_name}-poison"),
                                                 self.queue_options, self.lease_seconds))
        timers = [b for b in self.bindings if b.trigger == "timer"]
        claims = self._claims() if timers else None
        self._timers = [TimerRunner(b, parse_schedule(b.schedule or ""), claims) for b in timers]
        self._blob_events = self._blob_event_sources()
        http = [b for b in self.bindings if b.trigger == "http"]
        if http:
            self._server = LocalHttpServer((self.bind, self._port), build_routes(http), self.route_prefix)
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                             name="http", daemon=True).start()
        for part in [*self._pollers, *self._timers, *self._blob_events]:
            part.start()
        if self._pollers:
            wake_on_enqueue(self._pollers)
        return self

    def _blob_event_sources(self) -> list[BlobEventSource]:
        """One source per Event Grid function, watching the containers LOCAL_HOST_BLOB_EVENTS names."""
        bindings = [b for b in self.bindings if b.trigger == "event_grid"]
        if not bindings:
            return []
        options = BlobEventOptions.from_host(self.host_config)
        if not options.containers:
            logger.warning("Event Grid functions %s get no events: set LOCAL_HOST_BLOB_EVENTS to the containers "
                           "whose BlobCreated events they receive (or *)", [b.name for b in bindings])
            return []
        blobs = storage_client("AzureWebJobsStorage", "blob")
        receipts = storage_client("AzureWebJobsStorage", "table").get_table_client(RECEIPTS_TABLE)
        return [BlobEventSource(b, blobs, receipts, options) for b in bindings]

    @staticmethod
    def _claims() -> Any:
        """The container where timer occurrences are claimed, so one host of many runs each."""
        try:
            return storage_client("AzureWebJobsStorage", "blob").get_container_client("azure-webjobs-hosts")
        except LocalHostError:
            logger.warning("AzureWebJobsStorage is not set: timers run on every local host, uncoordinated")
            return None

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop taking work, let running invocations finish up to ``timeout`` s; True if all did."""
        deadline = time.monotonic() + timeout
        for part in [*self._timers, *self._pollers, *self._blob_events]:
            part.stop()
        if self._server:
            self._server.shutdown()
        parts = [*self._pollers, *self._timers, *self._blob_events, *([self._server] if self._server else [])]
        idle = all(part.wait_idle(deadline - time.monotonic()) for part in parts)
        if not idle:
            logger.warning("stopped with invocations still running; their queue messages reappear after the lease")
        if self._server:
            self._server.server_close()
        return idle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a Function App's functions locally, honouring host.json.")
    parser.add_argument("--app", default="function_app", help="module[:attribute] of the FunctionApp (app)")
    parser.add_argument("--host-json", default=str(ROOT / "host.json"))
    parser.add_argument("--settings", default=str(ROOT / "local.settings.json"),
                        help="local.settings.json whose Values fill unset environment variables (if it exists)")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--functions", help="comma-separated function names to run (default: all)")
    parser.add_argument("--no-timers", action="store_true", help="do not run timer triggers")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run in the foreground until SIGINT or SIGTERM."""
    args = _parse_args(argv)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log_file:
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(level=args.log_level.upper(), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every request at INFO
    if Path(args.settings).is_file():
        logger.info("%d settings from %s", load_local_settings(args.settings), args.settings)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module_name, _, attribute = args.app.partition(":")
    try:
        app = getattr(importlib.import_module(module_name), attribute or "app")
        functions = [f.strip() for f in args.functions.split(",") if f.strip()] if args.functions else None
        host = LocalHost(app, load_host_config(args.host_json), args.port, bind=args.bind,
                         functions=functions, timers=not args.no_timers)
        for line in host.describe():
            print(line, flush=True)
        host.start()
    except (LocalHostError, ValueError, OSError) as exc:
        logger.error("cannot start: %s", exc)
        return 2
    where = f" on http://{args.bind}:{host.port}" if any(b.trigger == "http" for b in host.bindings) else ""
    print(f"Local host ready{where} (Ctrl-C stops it)", flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.wait(1.0):
        pass
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)  # a second signal ends the process at once
    logger.info("stopping: waiting up to %.0f s for running invocations", args.shutdown_timeout)
    if host.stop(args.shutdown_timeout):
        return 0
    logging.shutdown()  # invocations still run on the worker pool, whose threads exit would wait for: end now
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())

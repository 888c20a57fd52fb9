"""Tracing and metrics (OpenTelemetry): one trace per job, however many instances ran it.

Shape of a job's trace (span names; every span carries ``job.id``)::

    job.submit                          root; its context is kept on the job row (``traceparent``)
    └ stage.run                         one per stage message: a fan-out chunk (``stage``, ``fanout.*``)
      └ task.run                        one per task message: an attempt (``task.*``, ``task.outcome``)
        └ stage.end                     the commit that ended the stage: what follows it (``stage.next``)
          └ stage.run ... └ job.complete └ webhook.deliver

The context travels inside the queue messages (``traceparent``, W3C); ``job.retry`` and ``job.cancel``
start their own trace with a link to the job's first one. Metrics beside them: ``geoetl.tasks.started``,
``geoetl.tasks.ended`` (by ``task.type``, ``task.outcome``), ``geoetl.task.duration``,
``geoetl.stage.fanout.duration`` and ``geoetl.queue.depth``.

Off unless configured (``setup``): then no SDK is imported, no provider installed, and every helper
here returns at its first line, so the engine's hot path pays one global read per call.
"""
from __future__ import annotations

import functools
import logging
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from config import Settings
from logs import log_context, log_event, redact
from models import JobRecord, Status, TaskRecord

if TYPE_CHECKING:
    from repositories import Repositories

logger = logging.getLogger(__name__)
SCOPE = "geoetl"
SERVICE_NAME = "geoetl"
# Logs reach Application Insights through the Functions host already (as JSON with trace_id and span_id);
# the distro exports only this logger's records, so they are not ingested twice.
EXPORTED_LOGGER = "geoetl.telemetry"
# HTTP and storage SDK calls are not traced: a task makes about six, and the group commit's leader thread
# makes them for other tasks' spans; the task span's duration covers them.
NOT_INSTRUMENTED = ("azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3")
_MESSAGE_FIELDS = (("job_id", "job.id"), ("task_id", "task.id"), ("stage", "stage"), ("from_task", "fanout.from"),
                   ("attempt", "message.attempt"))
_OUTCOMES = {Status.COMPLETED: "completed", Status.FAILED: "failed", Status.QUEUED: "retry"}
_PROPAGATOR = TraceContextTextMapPropagator()
_SAMPLED_FLAGS = frozenset(f"{flags:02x}" for flags in range(256) if flags & 1)
_NOOP = nullcontext(trace.INVALID_SPAN)
_lock = threading.Lock()
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Telemetry:
    """The tracer and instruments in use while tracing is on."""

    tracer: trace.Tracer
    tasks_started: metrics.Counter
    tasks_ended: metrics.Counter
    task_duration: metrics.Histogram
    fanout_duration: metrics.Histogram


_on: _Telemetry | None = None
_configured: str | None = None


# ---------------------------------------------------------------- set-up
def setup(settings: Settings, repos: "Repositories | None" = None) -> str:
    """Configure export once per process from ``settings``; returns what was chosen.

    ``azure_monitor`` when APPLICATIONINSIGHTS_CONNECTION_STRING is set (the Azure Monitor OpenTelemetry
    distro), else ``console`` / ``otlp`` as OTEL_TRACES_EXPORTER asks, else ``none`` (nothing installed).
    With ``repos``, the depth of its queues is observed as a gauge.
    """
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        chosen = "azure_monitor" if settings.applicationinsights_connection_string else settings.otel_traces_exporter
        if chosen == "none":
            _configured = chosen
            return chosen
        if chosen == "azure_monitor":
            from azure.monitor.opentelemetry import configure_azure_monitor

            # every job's whole trace is kept (sampling_ratio 1.0, decided per trace id, the same on every
            # instance); OTEL_TRACES_SAMPLER=microsoft.fixed_percentage + OTEL_TRACES_SAMPLER_ARG=0.1 keeps 10%
            configure_azure_monitor(connection_string=settings.applicationinsights_connection_string,
                                    logger_name=EXPORTED_LOGGER, sampling_ratio=1.0,
                                    instrumentation_options={name: {"enabled": False} for name in NOT_INSTRUMENTED})
        else:
            _install_sdk(chosen, settings.otel_exporter_otlp_endpoint)
        activate(trace.get_tracer_provider(), metrics.get_meter_provider(), repos)
        _configured = chosen
    log_event(logger, "tracing_configured", exporter=chosen)
    return chosen


def _install_sdk(exporter: str, endpoint: str | None) -> None:
    """Global SDK providers exporting spans and metrics to the console (JSON lines on stdout) or OTLP/HTTP."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    spans: SpanExporter
    numbers: MetricExporter

    if exporter == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        spans = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        numbers = ConsoleMetricExporter(formatter=lambda data: data.to_json(indent=None) + "\n")
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = endpoint.rstrip("/") if endpoint else None  # unset: the exporter's own default (localhost:4318)
        spans = OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None)
        numbers = OTLPMetricExporter(endpoint=f"{base}/v1/metrics" if base else None)
    resource = Resource.create()  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, when set, name the service
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    reader = PeriodicExportingMetricReader(numbers)  # every 60 s (OTEL_METRIC_EXPORT_INTERVAL) and at exit
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))


def activate(tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider | None = None,
             repos: "Repositories | None" = None) -> None:
    """Turn tracing on with these providers (``setup`` does; tests pass in-memory ones)."""
    global _on
    meter = (meter_provider or metrics.NoOpMeterProvider()).get_meter(SCOPE)
    if repos is not None:
        meter.create_observable_gauge("geoetl.queue.depth", [_queue_depths(repos)], unit="{message}",
                                      description="approximate messages in each queue (poison queues too)")
    _on = _Telemetry(
        tracer=tracer_provider.get_tracer(SCOPE),
        tasks_started=meter.create_counter("geoetl.tasks.started", unit="{task}",
                                           description="task attempts started, by task.type"),
        tasks_ended=meter.create_counter("geoetl.tasks.ended", unit="{task}",
                                         description="task attempts ended, by task.type and task.outcome"),
        task_duration=meter.create_histogram("geoetl.task.duration", unit="s",
                                             description="a task attempt's handler time, by task.type and outcome"),
        fanout_duration=meter.create_histogram("geoetl.stage.fanout.duration", unit="s",
                                               description="writing one fan-out chunk's task rows and messages"))


def deactivate() -> None:
    """Turn tracing off again (tests); providers already installed stay installed."""
    global _on
    _on = None


def enabled() -> bool:
    """True while spans are recorded."""
    return _on is not None


def _queue_depths(repos: "Repositories") -> Callable[[Any], list[metrics.Observation]]:
    def observe(_options: Any) -> list[metrics.Observation]:
        found = []
        for queue in repos.queues():  # one cheap request per queue per export interval (60 s)
            try:
                depth = queue.client.get_queue_properties(timeout=5).approximate_message_count
            except Exception as exc:  # noqa: BLE001 - a missed sample; the next interval tries again
                log_event(logger, "queue_depth_unread", logging.WARNING, queue=queue.name, error=str(exc))
                continue
            # azure-storage-queue types approximate_message_count Optional; get_queue_properties always fills it
            found.append(metrics.Observation(depth, {"queue": queue.name}))  # type: ignore[arg-type]
        return found
    return observe


# ---------------------------------------------------------------- spans
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, parent: str | None = None,
         **attributes: Any) -> AbstractContextManager[Any]:
    """A context manager: a span ``name`` (child of ``parent``, a traceparent, or of the current span),
    attributes named with dots for underscores (``job_id`` -> ``job.id``); log lines inside carry its ids.
    Off: one shared no-op context."""
    if _on is None:
        return _NOOP
    context = _extract(parent) if parent else None
    return _span(_on, name, kind, context, {k.replace("_", "."): _value(v) for k, v in attributes.items()})


@contextmanager
def _span(on: _Telemetry, name: str, kind: SpanKind, context: Any, attributes: dict[str, Any]) -> Iterator[Any]:
    with on.tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes,
                                         record_exception=False, set_status_on_exception=False) as current:
        ids = current.get_span_context()
        with log_context(trace_id=format(ids.trace_id, "032x"), span_id=format(ids.span_id, "016x")):
            try:
                yield current
            except BaseException as exc:  # recorded redacted: error texts may hold URLs with SAS tokens
                text = redact(f"{type(exc).__name__}: {exc}")
                current.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": text})
                current.set_status(StatusCode.ERROR, text)
                raise


def consumer(name: str) -> Callable[[F], F]:
    """Decorate ``handler(owner, message, ...)``: it runs in span ``name``, child of ``message.traceparent``
    (a new trace when the message has none), with the message's ids as attributes."""
    return _decorator(name, SpanKind.CONSUMER, from_message=True)


def traced(name: str) -> Callable[[F], F]:
    """Decorate ``fn(owner, subject, ...)``: it runs in span ``name`` under the current one; ``subject``'s
    ids (job_id, stage, task_id) become attributes when it has them."""
    return _decorator(name, SpanKind.INTERNAL, from_message=False)


def _decorator(name: str, kind: SpanKind, from_message: bool) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(owner: Any, subject: Any, *args: Any, **kwargs: Any) -> Any:
            on = _on
            if on is None:
                return fn(owner, subject, *args, **kwargs)
            context = None
            if from_message:
                traceparent = getattr(subject, "traceparent", None)
                context = _extract(traceparent) if traceparent else otel_context.Context()  # no parent: a root
            attributes = {key: _value(v) for field, key in _MESSAGE_FIELDS
                          if (v := getattr(subject, field, None)) is not None}
            with _span(on, name, kind, context, attributes):
                return fn(owner, subject, *args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (``job_id`` -> ``job.id``); nothing when off."""
    if _on is None:
        return
    trace.get_current_span().set_attributes({k.replace("_", "."): _value(v) for k, v in attributes.items()
                                             if v is not None})


def follows(job: JobRecord) -> None:
    """The current span acts on ``job`` (a retry, a cancel): name it, and link it to the job's first trace."""
    if _on is None:
        return
    current = trace.get_current_span()
    current.set_attributes({"job.id": job.job_id, "job.type": job.job_type})
    if job.traceparent:
        first = trace.get_current_span(_extract(job.traceparent)).get_span_context()
        if first.is_valid:
            current.add_link(first, {"link.kind": "job.first_trace"})


# ---------------------------------------------------------------- context in messages
def inject() -> str | None:
    """The current span's W3C ``traceparent`` (for a message to carry); None when off or outside a span."""
    if _on is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def carry(job: JobRecord) -> str | None:
    """What a message about ``job`` carries: the current span's context, else (a sweeper's re-send, outside
    any span) the job's root, so the message still continues the job's trace."""
    if _on is None:
        return None
    return inject() or job.traceparent


def _extract(traceparent: str) -> Any:
    return _PROPAGATOR.extract({"traceparent": traceparent})


def trace_id(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) of a traceparent whose trace is recorded (sampled): Application
    Insights' ``operation_Id``; None otherwise."""
    parts = (traceparent or "").split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[3] not in _SAMPLED_FLAGS:
        return None
    return parts[1]


# ---------------------------------------------------------------- the engine's measurements
def task_started(task: TaskRecord) -> None:
    """A claimed task's handler starts: name the task span, count the start."""
    on = _on
    if on is None:
        return
    trace.get_current_span().set_attributes({
        "task.type": task.task_type, "task.version": task.task_version or 0, "task.attempt": task.attempts,
        "stage": task.stage})
    on.tasks_started.add(1, {"task.type": task.task_type})


def task_ended(task: TaskRecord, status: Status, seconds: float, error: str | None = None) -> None:
    """A handler returned: the outcome (completed, failed, retry) on the span and in the counters."""
    on = _on
    if on is None:
        return
    outcome = _OUTCOMES.get(status, str(status))
    current = trace.get_current_span()
    current.set_attribute("task.outcome", outcome)
    if status == Status.FAILED:
        current.set_status(StatusCode.ERROR, error or "task failed")
    elif error:
        current.set_attribute("task.error", error)
    labels = {"task.type": task.task_type, "task.outcome": outcome}
    on.tasks_ended.add(1, labels)
    on.task_duration.record(seconds, labels)


def fanned_out(task_type: str, stage_name: str, tasks: int, end: int, seconds: float) -> None:
    """A fan-out chunk went out: its size on the span, its time in the histogram."""
    on = _on
    if on is None:
        return
    trace.get_current_span().set_attributes({"stage.name": stage_name, "task.type": task_type,
                                             "fanout.tasks": tasks, "fanout.end": end})
    on.fanout_duration.record(seconds, {"task.type": task_type})


def _value(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value.value if isinstance(value, Status) else value
    return str(value)

"""Tracing (engine_tracing.py): one job is one trace, across queue hops and host processes; a retry links to
the first trace; the exporters the settings name receive the spans; and off, nothing is installed and the
engine's hooks cost about a microsecond.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import api_jobs
import engine_status
import engine_tracing
from support import Receiver, fresh_settings, settings_env
from host_proc import HostProcess
from models import StageMessage, Status, TaskRecord, decode_job_message
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine

ROOT = Path(__file__).resolve().parents[1]
TRACE_SETTINGS = ("APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
                  "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER")


@pytest.fixture
def receiver():
    r = Receiver(ok=200)
    yield r
    r.close()


@pytest.fixture
def tracing():
    """Tracing on in this process, into memory (no global provider is installed: other tests stay untraced)."""
    spans, numbers = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    engine_tracing.activate(provider, MeterProvider(metric_readers=[numbers]))
    try:
        yield spans, numbers
    finally:
        engine_tracing.deactivate()


def hex_id(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


def metric_points(reader: InMemoryMetricReader) -> dict[str, list]:
    """Metric name -> its data points."""
    found: dict[str, list] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any tracing setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in TRACE_SETTINGS}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


# ---------------------------------------------------------------- in process: the span tree
def test_a_job_is_one_trace_with_a_span_per_stage_and_task(azurite, tracing, receiver, caplog):
    spans_out, numbers = tracing
    caplog.set_level(logging.INFO, logger="engine_tasks")
    settings = fresh_settings(azurite.connection_string, webhook_secret="s", webhook_allow_loopback=True)
    engine = Engine(Repositories(settings).ensure())
    code, body = api_jobs.submit(engine, "hello_world", b'{"n": 3}', "http://t", f"{receiver.base}/hook")
    assert code == 202, body
    job_id = body["job_id"]
    QueueDriver(engine).run(job_id)
    assert engine.store.get_job(job_id).status == Status.COMPLETED

    spans = spans_out.get_finished_spans()
    assert {s.attributes.get("job.id") for s in spans} == {job_id}, "every span names the job"
    assert len({s.context.trace_id for s in spans}) == 1, "one job, one trace"
    roots = [s for s in spans if s.parent is None]
    assert [r.name for r in roots] == ["job.submit"]
    by_id = {s.context.span_id: s for s in spans}
    assert all(s.parent.span_id in by_id for s in spans if s.parent is not None), "no span hangs off a lost parent"
    names = Counter(s.name for s in spans)
    assert names == {"job.submit": 1, "stage.run": 2, "task.run": 6, "stage.end": 2, "job.complete": 1,
                     "webhook.deliver": 1}, names

    stages = {s.attributes["stage"]: s for s in spans if s.name == "stage.run"}
    assert set(stages) == {1, 2} and stages[1].parent.span_id == roots[0].context.span_id
    assert stages[1].attributes["fanout.tasks"] == 3 and stages[1].attributes["task.type"] == "hello_greeting"
    tasks = [s for s in spans if s.name == "task.run"]
    assert len({t.attributes["task.id"] for t in tasks}) == 6
    for t in tasks:
        assert t.attributes["task.outcome"] == "completed" and t.attributes["task.attempt"] == 1
        assert t.attributes["task.version"] >= 1 and t.attributes["task.type"]
        assert by_id[t.parent.span_id] is stages[t.attributes["stage"]], "a task is a child of its stage's fan-out"
    ends = [s for s in spans if s.name == "stage.end"]
    assert all(by_id[e.parent.span_id].name == "task.run" for e in ends), "the last task's commit decides"
    assert {e.attributes["stage.next"] for e in ends} == {"stage 2", "completion"}
    complete = next(s for s in spans if s.name == "job.complete")
    assert complete.attributes["job.status"] == "completed"
    webhook = next(s for s in spans if s.name == "webhook.deliver")
    assert webhook.attributes["webhook.state"] == "delivered" and by_id[webhook.parent.span_id] is complete

    trace_hex = hex_id(roots[0].context.trace_id, 32)
    assert engine_status.status_document(engine.store, engine.store.get_job(job_id)).trace_id == trace_hex
    task_spans = {hex_id(t.context.span_id, 16) for t in tasks}
    started = [json.loads(r.getMessage()) for r in caplog.records if '"event":"task_started"' in r.getMessage()]
    assert len(started) == 6
    assert all(line["trace_id"] == trace_hex and line["span_id"] in task_spans for line in started), \
        "log lines carry the trace and span ids"

    points = metric_points(numbers)
    assert sum(p.value for p in points["geoetl.tasks.started"]) == 6
    ended = {(p.attributes["task.type"], p.attributes["task.outcome"]): p.value for p in points["geoetl.tasks.ended"]}
    assert sum(ended.values()) == 6 and {o for _, o in ended} == {"completed"}
    assert sum(p.count for p in points["geoetl.task.duration"]) == 6
    assert sum(p.count for p in points["geoetl.stage.fanout.duration"]) == 2


def test_a_retry_is_a_new_trace_linked_to_the_first(azurite, tracing):
    spans_out, _ = tracing
    engine = Engine(Repositories(fresh_settings(azurite.connection_string, retry_base_delay_s=0)).ensure())
    code, body = api_jobs.submit(engine, "hello_world", b'{"n": 2, "fail_indices": [0]}', "http://t")
    job_id = body["job_id"]
    QueueDriver(engine).run(job_id)
    assert engine.store.get_job(job_id).status == Status.FAILED
    first = spans_out.get_finished_spans()
    root = next(s for s in first if s.name == "job.submit")
    assert {s.context.trace_id for s in first} == {root.context.trace_id}
    failed = [s for s in first if s.name == "task.run" and s.attributes.get("task.outcome") == "failed"]
    assert len(failed) == 1 and failed[0].status.status_code == StatusCode.ERROR
    spans_out.clear()

    engine.retry(job_id)
    QueueDriver(engine).run(job_id)
    later = spans_out.get_finished_spans()
    retry = next(s for s in later if s.name == "job.retry")
    assert retry.parent is None and retry.context.trace_id != root.context.trace_id
    assert retry.attributes["job.id"] == job_id
    assert [(link.context.trace_id, link.context.span_id) for link in retry.links] == \
        [(root.context.trace_id, root.context.span_id)], "the retry links to the job's first trace"
    assert {s.context.trace_id for s in later} == {retry.context.trace_id}, "what the retry started is its trace"
    rerun = [s for s in later if s.name == "task.run"]
    assert len(rerun) == 1 and rerun[0].attributes["task.attempt"] == 1
    assert engine_status.status_document(engine.store, engine.store.get_job(job_id)).trace_id == \
        hex_id(root.context.trace_id, 32), "status names the first trace"


def test_the_queue_depth_gauge_reads_every_queue(azurite):
    repos = Repositories(fresh_settings(azurite.connection_string)).ensure()
    repos.jobs_queue.send(StageMessage(job_id="j" * 64, stage=1))
    numbers = InMemoryMetricReader()
    engine_tracing.activate(TracerProvider(), MeterProvider(metric_readers=[numbers]), repos)
    try:
        depths = {p.attributes["queue"]: p.value for p in metric_points(numbers)["geoetl.queue.depth"]}
    finally:
        engine_tracing.deactivate()
    assert depths == {repos.jobs_queue.name: 1, repos.tasks_queue.name: 0, repos.jobs_poison.name: 0,
                      repos.tasks_poison.name: 0}


def test_messages_carry_the_context_only_when_there_is_one():
    plain = StageMessage(job_id="j" * 64, stage=1)
    assert "traceparent" not in plain.encode(), "tracing off: the wire format is unchanged"
    traced = StageMessage(job_id="j" * 64, stage=1, traceparent=f"00-{'a' * 32}-{'b' * 16}-01")
    assert decode_job_message(traced.encode()) == traced
    assert engine_tracing.trace_id(traced.traceparent) == "a" * 32, "a recorded trace: status shows its id"
    assert engine_tracing.trace_id(traced.traceparent[:-2] + "00") is None, "sampled out: nothing to find"
    assert engine_tracing.trace_id(None) is None and engine_tracing.trace_id("garbage") is None


# ---------------------------------------------------------------- off: nothing installed, next to nothing paid
SETUP_SCRIPT = """
import json, sys
from opentelemetry import metrics, trace
import engine_tracing
from config import Settings
chosen = engine_tracing.setup(Settings())
print(json.dumps({"chosen": chosen, "tracer_provider": type(trace.get_tracer_provider()).__name__,
                  "meter_provider": type(metrics.get_meter_provider()).__name__,
                  "sdk": sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "azure.monitor"))),
                  "inject_outside_spans": engine_tracing.inject(),
                  "shared_noop": engine_tracing.span("a") is engine_tracing.span("b", job_id="j")}))
"""


def run_setup(**env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SETUP_SCRIPT], capture_output=True, text=True, timeout=120,
                          env=clean_env(**env), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_with_nothing_configured_no_provider_is_installed():
    off = run_setup()
    assert off == {"chosen": "none", "tracer_provider": "ProxyTracerProvider", "meter_provider": "_ProxyMeterProvider",
                   "sdk": [], "inject_outside_spans": None, "shared_noop": True}
    on = run_setup(OTEL_TRACES_EXPORTER="console")  # the same check sees a configured process
    assert on["chosen"] == "console" and on["tracer_provider"] == "TracerProvider" and on["sdk"]
    assert on["shared_noop"] is False


def test_tracing_off_costs_about_a_microsecond_per_task():
    """Micro-benchmark: 10,000 no-op span enters, and the engine's per-task hooks, with tracing off."""
    assert not engine_tracing.enabled()
    n = 10_000
    task = TaskRecord(job_id="j", task_id="t", stage=1, index=0, task_type="hello_greeting")

    class Owner:
        @engine_tracing.consumer("task.run")
        def run(self, msg):
            return None

    owner, noop = Owner(), trace.NoOpTracer()

    def best_us(loop) -> float:  # best of 5: the machine is shared
        runs = []
        for _ in range(5):
            began = time.perf_counter()
            loop()
            runs.append(time.perf_counter() - began)
        return min(runs) / n * 1e6

    def spans():
        for _ in range(n):
            with engine_tracing.span("task.run", job_id="j"):
                pass

    def api_noop():
        for _ in range(n):
            with noop.start_as_current_span("task.run", attributes={"job.id": "j"}):
                pass

    def per_task():  # what run_task, _run_claimed and a retry pay: the wrapper, two hooks, one inject
        for _ in range(n):
            owner.run(task)
            engine_tracing.task_started(task)
            engine_tracing.task_ended(task, Status.COMPLETED, 0.01)
            engine_tracing.inject()

    span_us, api_us, task_us = best_us(spans), best_us(api_noop), best_us(per_task)
    print(f"\ntracing off: {span_us:.2f} us per span enter (the API's no-op tracer: {api_us:.2f} us); "
          f"{task_us:.2f} us of hooks per task, against milliseconds of storage requests per task")
    assert span_us < api_us, "off, a span costs less than the API's own no-op tracer"
    assert task_us < 25, f"{task_us:.1f} us per task is not negligible"


# ---------------------------------------------------------------- exporters, each in a process of its own
def test_otlp_export_reaches_a_loopback_receiver(receiver):
    script = """
from opentelemetry import metrics, trace
import engine_tracing
from config import Settings
assert engine_tracing.setup(Settings()) == "otlp"
with engine_tracing.span("job.submit", job_id="abc"):
    pass
trace.get_tracer_provider().shutdown()
metrics.get_meter_provider().shutdown()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=clean_env(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base))
    assert done.returncode == 0, done.stderr[-3000:]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    posts = [body for path, _, body in receiver.requests if path == "/v1/traces"]
    assert posts, [path for path, _, _ in receiver.requests]
    request = ExportTraceServiceRequest.FromString(posts[0])
    spans = [s for r in request.resource_spans for scope in r.scope_spans for s in scope.spans]
    assert [s.name for s in spans] == ["job.submit"]
    assert {a.key: a.value.string_value for a in spans[0].attributes} == {"job.id": "abc"}


def test_azure_monitor_distro_exports_when_the_connection_string_is_set(receiver, tmp_path):
    """The distro, pointed at a loopback ingestion endpoint (statsbeat and the control plane off)."""
    script = """
from opentelemetry import trace
import engine_tracing
from config import Settings
assert engine_tracing.setup(Settings()) == "azure_monitor"
assert type(trace.get_tracer_provider()).__name__ == "TracerProvider"
with engine_tracing.span("job.submit", job_id="abc"):
    pass
trace.get_tracer_provider().force_flush()
"""
    connection = (f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={receiver.base}/;"
                  f"LiveEndpoint={receiver.base}/")
    env = clean_env(APPLICATIONINSIGHTS_CONNECTION_STRING=connection, APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
                    APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED="true", OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="otel",
                    TMPDIR=str(tmp_path))
    # setup asks for every trace: the distro's own default sampler (5 spans/s, cold at start) can drop this span
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    envelopes = [e for path, _, body in receiver.requests if path.endswith("/v2.1/track") for e in json.loads(body)]
    dependencies = [e for e in envelopes if e.get("name", "").endswith("RemoteDependency")]
    assert [d["data"]["baseData"]["name"] for d in dependencies] == ["job.submit"], envelopes
    assert dependencies[0]["data"]["baseData"]["properties"]["job.id"] == "abc"


# ---------------------------------------------------------------- through a local host process
def console_spans(path: Path) -> list[dict]:
    """Spans the console exporter printed (one JSON object per line) in a host's output."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith('{"name"'):
            try:
                span = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "context" in span:
                found.append(span)
    return found


def test_a_job_run_by_a_host_process_is_one_trace(azurite, tmp_path):
    settings = fresh_settings(azurite.connection_string)
    Repositories(settings).ensure()
    env = {**settings_env(settings), "OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    host = HostProcess(env, tmp_path / "host.log").start()
    try:
        answer = requests.post(f"{host.url}/jobs/submit/hello_world", json={"n": 3}, timeout=30)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        deadline = time.monotonic() + 90
        while True:
            status = requests.get(f"{host.url}/jobs/status/{job_id}", timeout=30).json()
            if status["status"] in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status["status"] == "completed", status
    finally:
        host.stop()  # SIGTERM: the batch span processor flushes at exit
    spans = [s for s in console_spans(tmp_path / "host.out") if s["attributes"].get("job.id") == job_id]
    assert {s["context"]["trace_id"] for s in spans} == {f"0x{status['trace_id']}"}, "one trace, the one status names"
    roots = [s for s in spans if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["job.submit"]
    assert sorted(s["attributes"]["stage"] for s in spans if s["name"] == "stage.run") == [1, 2]
    tasks = [s for s in spans if s["name"] == "task.run"]
    assert len(tasks) == 6 and len({t["attributes"]["task.id"] for t in tasks}) == 6
    assert {t["attributes"]["task.outcome"] for t in tasks} == {"completed"}
    ids = {s["context"]["span_id"] for s in spans}
    assert all(s["parent_id"] in ids for s in spans if s["parent_id"] is not None)
    lines = [e for e in host.events() if e.get("event") == "task_started"]
    assert lines and all(e["trace_id"] == status["trace_id"] for e in lines), "the host's log lines carry the trace"

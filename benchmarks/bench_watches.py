"""Arrivals benchmark: a burst of new raster blobs through the local host's blob events, one job each.

Starts its own Azurite (private ports, temporary data folder; stopped by PID at the end, even on error or
SIGTERM) and ``--hosts`` local host processes (``tests/host_proc.HostProcess``) serving ``blob_arrived``
and the two queue functions, with ``LOCAL_HOST_BLOB_EVENTS`` on one input container. A watch starts
``validate_raster`` for every raster under ``burst/``. Then, in one run:

1. burst      ``--n`` blobs (the same tiny 16 x 16 GeoTIFF under n names) plus one ``.aux.xml`` sidecar per
              ten, uploaded by 16 threads as fast as Azurite takes them. Timed from the first upload to
              the first job created, the last job created and the last job ended (the job rows'
              ``created_at`` / ``updated_at``; the job listing is polled every 0.5 s to know when all ended).
2. overwrite  ``--n // 20`` of those blobs uploaded again (new ETags): as many new jobs are expected.

Duplicates are counted three ways: jobs per blob version (must be 1), ``arrival_submitted`` events that
found the job already there (a second delivery of a version: 0 when the receipts work), and function
invocations against blob versions. It is not a test and asserts nothing. It prints a Markdown table and a
JSON summary, and writes the JSON to ``benchmarks/results/bench_watches-<UTC date>[-n<n>][-h<hosts>].json``.

    .venv/bin/python benchmarks/bench_watches.py [--n 1000] [--hosts 2]
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azurite_proc import Azurite
from support import fresh_settings, settings_env
from conftest_geo import write_raster
from host_proc import HostProcess

from repositories import Repositories
from task_manager import Engine

RESULTS = ROOT / "benchmarks" / "results"
POLL_S = 0.5


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench_watches] {message}", file=sys.stderr, flush=True)


def tiny_geotiff(folder: Path) -> bytes:
    """A 16 x 16 single-band GeoTIFF (about 1 KiB)."""
    data = (np.arange(256, dtype="uint8").reshape(1, 16, 16))
    return write_raster(folder / "tiny.tif", data, crs="EPSG:32633").read_bytes()


def job_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every listing row (job id, type, status), all pages."""
    rows, token = [], None
    while True:
        page, token = engine.store.list_jobs(None, "validate_raster", 1000, token)
        rows += page
        if not token:
            return rows


def wait_for(engine: Engine, expected: int, timeout: float) -> bool:
    """Poll the job listing until ``expected`` jobs exist and all ended; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = job_rows(engine)
        if len(rows) >= expected and all(r["status"] in ("completed", "failed", "cancelled") for r in rows):
            return True
        time.sleep(POLL_S)
    return False


def timings(jobs: list, started: datetime) -> dict[str, float | None]:
    """From the job rows: first job created, last job created, last job ended, in s after ``started``."""
    if not jobs:
        return {"first_job_s": None, "all_submitted_s": None, "last_completed_s": None}
    ended = [j.updated_at for j in jobs if j.status.value in ("completed", "failed", "cancelled")]
    return {"first_job_s": round((min(j.created_at for j in jobs) - started).total_seconds(), 2),
            "all_submitted_s": round((max(j.created_at for j in jobs) - started).total_seconds(), 2),
            "last_completed_s": round((max(ended) - started).total_seconds(), 2) if len(ended) == len(jobs) else None}


def upload_all(client, names: list[str], data: bytes) -> float:
    """Upload every name with 16 threads; seconds taken."""
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: client.upload_blob(name, io.BytesIO(data), overwrite=True), names))
    return time.perf_counter() - started


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Start everything, run the burst and the overwrites, stop everything; the summary."""
    azurite = Azurite(location=tmp / "azurite").start()
    hosts: list[HostProcess] = []
    try:
        container = f"arrivals-{uuid.uuid4().hex[:8]}"
        settings = fresh_settings(azurite.connection_string, input_container=container)
        engine = Engine(Repositories(settings).ensure())
        engine.repos.rasters.ensure_container(container)
        engine.triggers.create_watch(container, "burst/", "validate_raster", {})
        env = {**settings_env(settings), "INPUT_CONTAINER": container, "LOCAL_HOST_BLOB_EVENTS": container,
               "LOCAL_HOST_BLOB_POLL_SECONDS": "1"}
        functions = ["health", "blob_arrived", "process_job_message", "process_task_message"]
        hosts = [HostProcess(env, tmp / f"host{i}.log", functions=functions).start() for i in range(args.hosts)]
        receipts = TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(
            "localhostblobreceipts")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                receipts.get_entity("blob_arrived", "subscription")
                break
            except Exception:  # noqa: BLE001 - not subscribed yet
                time.sleep(0.2)
        time.sleep(1.2)  # blob times have whole seconds
        client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)
        data = tiny_geotiff(tmp)
        names = [f"burst/scene-{i:05d}.tif" for i in range(args.n)]
        sidecars = [f"{name}.aux.xml" for name in names[::10]]

        log(f"burst: uploading {len(names)} rasters and {len(sidecars)} sidecars")
        burst_start = datetime.now(UTC)
        upload_s = upload_all(client, names + sidecars, data)
        log(f"burst: uploaded in {upload_s:.1f} s; all ended: {wait_for(engine, args.n, args.timeout)}")
        first_versions = {j.job_id for j in (engine.store.get_job(r["job_id"]) for r in job_rows(engine))}

        again = names[::20]
        log(f"overwrite: uploading {len(again)} blobs again")
        overwrite_start = datetime.now(UTC)
        upload_all(client, again, data + b"\0")  # new content, new ETag
        log(f"overwrite: all ended: {wait_for(engine, args.n + len(again), args.timeout)}")
        time.sleep(3)  # a few more polls: anything submitted late would show now
        jobs = [engine.store.get_job(r["job_id"]) for r in job_rows(engine)]
        burst = {**timings([j for j in jobs if j.job_id in first_versions], burst_start),
                 "upload_s": round(upload_s, 2)}
        overwrite = timings([j for j in jobs if j.job_id not in first_versions], overwrite_start)
    finally:
        for host in hosts:
            host.stop()
        events = [e for host in hosts for e in host.events()]
        per_host = [sum(1 for e in host.events() if e.get("event") == "arrival_submitted") for host in hosts]
        invocations = [host.log_path.read_text(errors="replace").count("Executed blob_arrived (Succeeded")
                       for host in hosts if host.log_path.exists()]
        azurite.stop()

    submitted = [e for e in events if e.get("event") == "arrival_submitted"]
    versions = Counter((j.parameters["blob"], j.parameters["source_etag"]) for j in jobs)
    ignored = Counter(e.get("reason") for e in events if e.get("event") == "arrival_ignored")
    return {
        "machine": {**machine_facts(args), "loadavg_start": args.loadavg_start},
        "burst": {"rasters": args.n, "sidecars": len(sidecars), **{k: round(v, 2) if v is not None else None
                                                                   for k, v in burst.items()}},
        "overwrite": {"blobs": len(again), **{k: round(v, 2) if v is not None else None
                                              for k, v in overwrite.items()}},
        "jobs_created": len(jobs),
        "blob_versions": len(versions),
        "distinct_blobs": len({blob for blob, _ in versions}),
        "versions_with_more_than_one_job": sum(1 for c in versions.values() if c > 1),
        "duplicate_deliveries": sum(1 for e in submitted if not e.get("created")),
        "function_invocations": sum(invocations),
        "submitted_per_host": per_host,
        "ignored": dict(ignored),
        "jobs_by_status": dict(Counter(j.status.value for j in jobs)),
    }


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers were measured on."""
    azurite = json.loads((ROOT / "node_modules" / "azurite" / "package.json").read_text()).get("version")
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "n": args.n, "hosts": args.hosts,
            "nproc": len(os.sched_getaffinity(0)), "python": platform.python_version(), "azurite": azurite}


def markdown(summary: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    b, o = summary["burst"], summary["overwrite"]
    rows = [
        ("rasters uploaded (+ sidecars)", f"{b['rasters']} (+ {b['sidecars']}) in {b['upload_s']} s"),
        ("first job / all submitted / last completed", f"{b['first_job_s']} / {b['all_submitted_s']} / "
                                                         f"{b['last_completed_s']} s after the first upload"),
        ("overwritten blobs -> last completed", f"{o['blobs']} -> {o['last_completed_s']} s"),
        ("jobs created (blob versions, blobs)", f"{summary['jobs_created']} ({summary['blob_versions']}, "
                                                 f"{summary['distinct_blobs']})"),
        ("jobs by status", json.dumps(summary["jobs_by_status"])),
        ("versions with more than one job", str(summary["versions_with_more_than_one_job"])),
        ("duplicate deliveries (job already there)", str(summary["duplicate_deliveries"])),
        ("function invocations", str(summary["function_invocations"])),
        ("submitted per host", str(summary["submitted_per_host"])),
        ("ignored", json.dumps(summary["ignored"])),
    ]
    return "\n".join(["| what | result |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print Markdown and JSON; write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="rasters in the burst (default 1000)")
    parser.add_argument("--hosts", type=int, default=2, help="local host processes (default 2)")
    parser.add_argument("--timeout", type=float, default=1800, help="give up waiting for a phase after this long (s)")
    args = parser.parse_args(argv)
    args.loadavg_start = [round(x, 2) for x in os.getloadavg()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the hosts and Azurite
    logging.getLogger("azure").setLevel(logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-arrivals-") as tmp:
        summary = run(args, Path(tmp))
    summary["machine"]["wall_s"] = round(time.perf_counter() - started, 1)
    summary["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    suffix = ("" if args.n == 1000 else f"-n{args.n}") + ("" if args.hosts == 2 else f"-h{args.hosts}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_watches-{datetime.now(UTC):%Y-%m-%d}{suffix}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(summary))
    print("```json")
    print(json.dumps(summary, indent=2))
    print("```")
    log(f"wrote {path.relative_to(ROOT)} ({summary['machine']['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sync benchmark: ``sync_container`` through the engine against a hand-written pypgstac ``Loader`` run.

Starts its own Azurite and its own PostgreSQL + PostGIS + pgstac (private ports, temporary folders;
both stopped by PID at the end, even on error or SIGTERM), writes ``--n`` small synthetic GeoTIFFs
(128 x 128 uint8, each on its own 3.84 km square of a UTM grid, so every bbox differs), uploads them
to an input container and measures, in one run:

1. ours       ``sync_container`` on that container through ``--hosts`` real local host processes
              (``bench_hosts.CountedHost``: ``local_host.py`` with every storage request counted, no timers),
              submitted over HTTP and timed from submit to the hosts' ``job_finished`` log line (nothing polls
              meanwhile, so the request counts are the job's own). Stage 1 lists the GeoTIFFs; stage 2 runs one
              ``stac_build_item`` task per blob (download, ``validate_raster``, ``build_item``; the item is the
              task's result); stage 3 runs one ``stac_load_items`` task per 500 items (``ensure_collection``
              from the chunk's extent + ``PgstacRepository.bulk_load``). The collection must then hold n items.
2. baseline   The same n items built in this process, one after the other, the way a hand-written
              loader would (list, download, ``validate_raster``, ``build_item``, like ``catalog_blob``),
              then loaded with ``PgstacRepository.bulk_load`` (pypgstac ``Loader``) into a second
              collection. Timed separately: (a) the bulk load alone, items already built, and (b) list
              + build + create the collection + bulk load, the fair comparison with ours, which also
              downloads and reads every file.
3. writes     Diagnostic: the catalogue writes alone as ``catalog_blob`` does them (``ensure_collection``
              + ``upsert_item`` per item), one after the other in this process, into a third collection.

From the hosts' JSON log events it reports the wall time distribution of the build and load tasks
(``task_ended.duration_ms``: the handler alone), the host's invocation times (handler + the engine's
claim and commit), how the tasks split across the hosts, task errors by kind, and a timeline of the job;
from the hosts' transports, storage requests per item by kind. From /proc: CPU seconds used during ours
and during (b) by the hosts, Azurite, PostgreSQL (each a process tree), this process and everything else
on the machine.

It is not a test and asserts nothing. It prints a Markdown table and a JSON summary, and writes the
JSON to ``benchmarks/results/bench_sync-<UTC date>[-n<n>][-h<hosts>].json`` (suffixes only for
non-default sizes).

    .venv/bin/python benchmarks/bench_sync.py [--n 200] [--hosts 2]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import bench_common
import rasterio
import requests
from azurite_proc import Azurite
from bench_common import LogTail, markdown_table, progress_log, read_host_log, run_benchmark, stats_ms
from bench_hosts import CountedHost, HostWatch
from bench_hosts import _requests as job_requests
from support import fresh_settings, settings_env
from conftest_geo import smooth_image, write_raster
from postgres_proc import Postgres, pg_bin
from rasterio.transform import from_origin

from config import Settings
from repositories import Repositories
import services_stac
from repository_pgstac import PgstacRepository
from services_raster import validate_raster
from services_stac import build_collection, build_item

SIZE_PX = 128  # side of each synthetic raster
PIXEL_M = 30.0
GRID_STEP_M = 4_000.0  # footprints 3.84 km wide on a 4 km grid: distinct, non-overlapping bboxes
GRID_COLUMNS = 20
UPLOAD_THREADS = 8
BUILD_TASK = "stac_build_item"
LOAD_TASK = "stac_load_items"
GOAL = 0.5  # the goal: ours >= 0.5 of the Loader's items/s
log = progress_log("bench_sync")


# ---------------------------------------------------------------------------------------------- CPU
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds of the process and of the children it reaped)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
            ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
            table[int(stat.parent.name)] = (int(fields[1]), ticks / CLOCK_TICKS)
    return table


def tree_cpu_seconds(table: dict[int, tuple[int, float]], roots: list[int]) -> float:
    """CPU seconds of the processes ``roots`` and all their descendants (PostgreSQL backends call
    setsid(), so process groups would miss them)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo += children.get(pid, [])
    return total


def machine_cpu_seconds() -> dict[str, float]:
    """Busy CPU seconds of the whole machine since boot (/proc/stat), and the part spent at nice > 0."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return {"busy": (user + nice + system + irq + softirq + steal) / CLOCK_TICKS, "nice": nice / CLOCK_TICKS}


class CpuMeter:
    """CPU seconds used by each component (a process tree) over a window, and by the rest of the machine."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self._wall = 0.0

    def _now(self) -> dict[str, float]:
        usage = os.times()
        table = process_table()
        out = {name: tree_cpu_seconds(table, pids) for name, pids in self.groups.items()}
        machine = machine_cpu_seconds()
        return {**out, "bench_process": usage.user + usage.system, "machine_busy": machine["busy"],
                "machine_nice": machine["nice"]}

    def start(self) -> None:
        """Open the window."""
        self._start, self._wall = self._now(), time.perf_counter()

    def stop(self) -> dict[str, Any]:
        """CPU seconds per component since ``start``; "other" is the machine's busy time nobody here used."""
        end, wall = self._now(), time.perf_counter() - self._wall
        used = {k: round(end[k] - self._start[k], 2) for k in end}
        ours = sum(v for k, v in used.items() if not k.startswith("machine_"))
        used["other_processes"] = round(max(0.0, used["machine_busy"] - ours), 2)
        return {"wall_s": round(wall, 2), "capacity_s": round(wall * len(os.sched_getaffinity(0)), 2),
                "cpu_s": used}


# ---------------------------------------------------------------------------------------------- input
def write_inputs(settings: Settings, n: int, folder: Path) -> dict[str, Any]:
    """Write n synthetic GeoTIFFs and upload them to the input container (8 threads)."""
    folder.mkdir(parents=True, exist_ok=True)
    rasters = Repositories(settings).rasters
    rasters.ensure_container(settings.input_container)
    started = time.perf_counter()
    paths = []
    for i in range(n):
        row, col = divmod(i, GRID_COLUMNS)
        transform = from_origin(400_000 + col * GRID_STEP_M, 4_000_000 - row * GRID_STEP_M, PIXEL_M, PIXEL_M)
        paths.append(write_raster(folder / f"tile{i:05d}.tif", smooth_image(1, SIZE_PX, SIZE_PX, seed=i),
                                  transform=transform))
    written_s = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        list(pool.map(lambda p: rasters.upload(settings.input_container, f"sync/{p.name}", p), paths))
    upload_s = time.perf_counter() - started
    sizes = [p.stat().st_size for p in paths]
    return {"files": n, "size_px": SIZE_PX, "dtype": "uint8", "bytes_mean": round(statistics.fmean(sizes)),
            "write_s": round(written_s, 2), "upload_s": round(upload_s, 2)}


# ---------------------------------------------------------------------------------------------- 1. ours
def host_env(settings: Settings, pg: Postgres) -> dict[str, str]:
    """What a host process needs: the engine's storage names, the catalogue and the containers."""
    pgs = pg.settings
    return {**settings_env(settings), "PGSTAC_HOST": pgs.host, "PGSTAC_PORT": str(pgs.port),
            "PGSTAC_DBNAME": pgs.dbname, "PGSTAC_USER": pgs.user,
            "PGSTAC_PASSWORD": pgs.password.get_secret_value(),
            "INPUT_CONTAINER": settings.input_container, "OUTPUT_CONTAINER": settings.output_container,
            "DEFAULT_COLLECTION": settings.default_collection}


def measure_ours(settings: Settings, hosts: list[CountedHost], n: int, catalogue: PgstacRepository,
                 meter: CpuMeter) -> dict[str, Any]:
    """sync_container over HTTP through the (started) hosts, timed from submit to the hosts' ``job_finished``
    log line; the storage requests the hosts sent meanwhile."""
    urls = [h.url for h in hosts]
    for url in urls:  # the first call builds each host's engine (tables, queues, container): not the job's
        requests.get(f"{url}/jobs/status/{'0' * 64}", timeout=60)
    time.sleep(1.0)  # the pollers' first receives
    watches = [HostWatch(LogTail(h.log_path)) for h in hosts]
    for watch in watches:
        watch.tail.read()  # start-up lines are not the job's
    before = [h.requests() for h in hosts]
    meter.start()
    body = {"container": settings.input_container, "collection_id": settings.default_collection}
    submitted_at, started = time.time(), time.monotonic()
    response = requests.post(f"{urls[0]}/jobs/submit/sync_container", json=body, timeout=30)
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:2000]}")
    job_id = response.json()["job_id"]
    while not any(w.finished_at for w in watches):
        if time.monotonic() - started > max(240.0, 1.5 * n):
            raise TimeoutError(f"job {job_id} not finished after {time.monotonic() - started:.0f} s")
        time.sleep(0.1)
        for watch in watches:
            watch.read(job_id)
    seconds = min(w.finished_at for w in watches if w.finished_at) - submitted_at
    cpu = meter.stop()
    time.sleep(0.5)  # the completion message's delete
    after = [h.requests() for h in hosts]
    final = requests.get(f"{urls[0]}/jobs/status/{job_id}", timeout=30).json()
    result = final.get("result_data") or {}
    items = catalogue.count_items(settings.default_collection)
    return {"job_id": job_id, "status": final.get("status"), "seconds": round(seconds, 2),
            "items_per_s": round(n / seconds, 1), "submitted_at": submitted_at,
            "collection": settings.default_collection, "items_in_collection": items,
            "items_match_n": items == n,
            "result": {k: result.get(k) for k in ("listed", "created", "updated", "failed", "loaded")},
            "stages": [{k: s.get(k) for k in ("stage", "name", "status", "tasks")} for s in final.get("stages", [])],
            "task_counts": final.get("tasks"), "attempts": final.get("attempts"),
            "recent_errors": final.get("recent_errors", [])[:3], "cpu": cpu,
            "requests": job_requests(before, after, n)}


# ---------------------------------------------------------------------------------------------- host logs
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")  # names in error messages, to count errors by kind

TIMELINE = (  # (label, event, match on fields, first or last occurrence)
    ("stage 1 (list) dispatched", "stage_dispatched", {"stage": 1}, min),
    ("stage 1 ended", "stage_advanced", {"stage": 1}, min),
    ("stage 2 message received (fan-out starts)", "job_message", {"kind": "stage", "stage": 2}, min),
    ("stage 2 fan-out done (rows + all messages sent)", "stage_dispatched", {"stage": 2}, min),
    ("first build task started", "task_started", {"stage": 2}, min),
    ("last build task ended", "task_ended", {"stage": 2}, max),
    ("stage 2 ended", "stage_advanced", {"stage": 2}, min),
    ("stage 3 message received", "job_message", {"kind": "stage", "stage": 3}, min),
    ("stage 3 planned and dispatched (load tasks' rows + messages)", "stage_dispatched", {"stage": 3}, min),
    ("first load task started", "task_started", {"stage": 3}, min),
    ("last load task ended", "task_ended", {"stage": 3}, max),
    ("stage 3 ended", "stage_advanced", {"stage": 3}, min),
    ("job finished", "job_finished", {}, min),
)


def summarize_hosts(logs: list[Path], job_id: str, submitted_at: float) -> dict[str, Any]:
    """Build and load task times, invocation times, the split across hosts, anomalies, and the job's timeline."""
    per_host, all_catalog, all_loads, all_ended, all_invocations = [], [], [], [], []
    errors: Counter[str] = Counter()
    marks: dict[str, float] = {}
    for index, path in enumerate(logs):
        events, invocations, levels = read_host_log(path)
        mine = [(t, e) for t, e in events if e.get("job_id") == job_id]
        counts = Counter(e["event"] for _, e in mine)
        ended = [e for _, e in mine if e["event"] == "task_ended"]
        catalog = [e["duration_ms"] for e in ended if e.get("task_type") == BUILD_TASK]
        all_catalog += catalog
        all_loads += [e["duration_ms"] for e in ended if e.get("task_type") == LOAD_TASK]
        errors.update(f"{e.get('status')}: {_QUOTED.sub('…', e['error']).replace(chr(10), ' ')[:200]}" for e in ended if e.get("error"))
        all_ended += [e["duration_ms"] for e in ended]
        all_invocations += invocations
        per_host.append({
            "host": index, "catalog_tasks_started": sum(1 for _, e in mine if e["event"] == "task_started"
                                                        and e.get("task_type") == BUILD_TASK),
            "catalog_tasks_ended": len(catalog), "catalog_ms": stats_ms(catalog),
            "invocation_ms": stats_ms(invocations),
            "pgstac_item_writes": sum(1 for _, e in events if e["event"] == "pgstac_item"),
            "pgstac_bulk_loads": sum(1 for _, e in events if e["event"] == "pgstac_bulk_load"),
            "claimed_elsewhere": counts["task_claimed_elsewhere"], "busy_deferred": counts["task_busy_deferred"],
            "retries_scheduled": counts["task_retry_scheduled"], "messages_ignored": counts["task_message_ignored"],
            "end_superseded": counts["task_end_superseded"],
            "warning_lines": levels["WARNING"], "error_lines": levels["ERROR"]})
        for stamp, event in mine:
            for label, name, match, pick in TIMELINE:
                if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                    marks[label] = pick(marks.get(label, stamp), stamp)
    total = sum(h["catalog_tasks_ended"] for h in per_host) or 1
    for host in per_host:
        host["share"] = round(host["catalog_tasks_ended"] / total, 3)
    timeline = [{"event": label, "s_after_submit": round(marks[label] - submitted_at, 2)}
                for label, *_ in TIMELINE if label in marks]
    phase = None
    if "first build task started" in marks and "last build task ended" in marks:
        phase_s = marks["last build task ended"] - marks["first build task started"]
        phase = {"seconds": round(phase_s, 2),
                 "items_per_s": round(len(all_catalog) / phase_s, 1) if phase_s > 0 else None,
                 "mean_concurrency": round(sum(all_catalog) / 1000 / phase_s, 2) if phase_s > 0 else None}
    overhead = None
    if all_invocations and all_ended:
        overhead = round(statistics.fmean(all_invocations) - statistics.fmean(all_ended), 1)
    return {"catalog_task_ms": stats_ms(all_catalog), "load_task_ms": stats_ms(all_loads),
            "task_invocation_ms": stats_ms(all_invocations),
            "engine_overhead_ms_mean": overhead, "catalog_phase": phase, "per_host": per_host,
            "task_errors": dict(errors.most_common()),
            "timeline": timeline}


# ---------------------------------------------------------------------------------------------- 2. baseline
def build_items(settings: Settings, collection_id: str, folder: Path) -> tuple[list[dict], dict[str, Any]]:
    """List the container, then per blob: download, ``validate_raster``, ``build_item`` (as catalog_blob)."""
    rasters = Repositories(settings).rasters
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "input.tif"
    steps: dict[str, list[float]] = {"download": [], "validate_raster": [], "build_item": [], "total": []}
    started = time.perf_counter()
    blobs = [b for b in rasters.list(settings.input_container) if b.name.lower().endswith((".tif", ".tiff"))]
    list_s = time.perf_counter() - started
    items = []
    for blob in blobs:
        t0 = time.perf_counter()
        info_blob = rasters.download(settings.input_container, blob.name, path)
        t1 = time.perf_counter()
        info = validate_raster(path)
        t2 = time.perf_counter()
        item = build_item(info, container=settings.input_container, blob=blob.name,
                          href=rasters.url(settings.input_container, blob.name), file_size=info_blob.size,
                          last_modified=info_blob.last_modified, collection_id=collection_id)
        items.append(item.to_dict(include_self_link=False, transform_hrefs=False))
        t3 = time.perf_counter()
        for name, seconds in (("download", t1 - t0), ("validate_raster", t2 - t1), ("build_item", t3 - t2),
                              ("total", t3 - t0)):
            steps[name].append(1000 * seconds)
    return items, {"list_s": round(list_s, 3), "per_item_ms": {k: stats_ms(v) for k, v in steps.items()}}


def measure_baseline(settings: Settings, catalogue: PgstacRepository, n: int, folder: Path,
                     meter: CpuMeter) -> tuple[dict[str, Any], list[dict]]:
    """Build the n items in process, create the collection, bulk load; (a) load alone, (b) everything."""
    collection_id = f"{settings.default_collection}-loader"
    meter.start()
    started = time.perf_counter()
    items, build = build_items(settings, collection_id, folder)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    catalogue.ensure_collection(build_collection(collection_id, items).to_dict(include_self_link=False,
                                                                               transform_hrefs=False))
    collection_s = time.perf_counter() - started
    started = time.perf_counter()
    loaded = catalogue.bulk_load(items)
    load_s = time.perf_counter() - started
    cpu = meter.stop()
    total_s = build_s + collection_s + load_s
    stored = catalogue.count_items(collection_id)
    return {"collection": collection_id, "items_built": len(items), "items_loaded": loaded,
            "items_in_collection": stored, "items_match_n": stored == n,
            "build_s": round(build_s, 2), "ensure_collection_s": round(collection_s, 3),
            "bulk_load_s": round(load_s, 3), "build_and_load_s": round(total_s, 2),
            "a_bulk_load_items_per_s": round(n / load_s, 1),
            "b_build_and_load_items_per_s": round(n / total_s, 1), "build": build, "cpu": cpu}, items


def measure_catalog_writes(catalogue: PgstacRepository, items: list[dict], collection_id: str) -> dict[str, Any]:
    """``ensure_collection`` + ``upsert_item`` per item, as each catalog task does, one after the other."""
    ensure_ms, upsert_ms = [], []
    started = time.perf_counter()
    for original in items:
        item = {**original, "collection": collection_id}
        t0 = time.perf_counter()
        catalogue.ensure_collection(build_collection(collection_id, [item]).to_dict(include_self_link=False,
                                                                                   transform_hrefs=False))
        t1 = time.perf_counter()
        catalogue.upsert_item(item)
        t2 = time.perf_counter()
        ensure_ms.append(1000 * (t1 - t0))
        upsert_ms.append(1000 * (t2 - t1))
    seconds = time.perf_counter() - started
    quarter = max(1, len(items) // 4)
    return {"collection": collection_id, "items": len(items), "seconds": round(seconds, 2),
            "items_per_s": round(len(items) / seconds, 1), "ensure_collection_ms": stats_ms(ensure_ms),
            "upsert_item_ms": stats_ms(upsert_ms),
            "upsert_item_ms_mean_first_quarter": round(statistics.fmean(upsert_ms[:quarter]), 1),
            "upsert_item_ms_mean_last_quarter": round(statistics.fmean(upsert_ms[-quarter:]), 1),
            "items_in_collection": catalogue.count_items(collection_id)}


# ---------------------------------------------------------------------------------------------- report
def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers were measured on."""
    return bench_common.machine_facts(
        ("pypgstac", "psycopg", "psycopg-pool", "rasterio", "pystac", "azure-storage-blob", "azure-data-tables",
         "azure-storage-queue"), n=args.n, hosts=args.hosts,
        postgres=bench_common.command_output(str(pg_bin() / "postgres"), "--version"), gdal=rasterio.__gdal_version__)


def pgstac_version(catalogue: PgstacRepository) -> str | None:
    """pgstac's schema version (``get_version()``)."""
    with suppress(Exception), catalogue._cursor("reading the pgstac version") as cur:
        cur.execute("SELECT get_version()")
        return cur.fetchone()[0]
    return None


def _dist(d: dict[str, Any]) -> str:
    if not d.get("count"):
        return "-"
    return f"p50 {d['p50']}, p90 {d['p90']}, p99 {d['p99']}, max {d['max']} (mean {d['mean']}, n={d['count']})"


def _cpu(cpu: dict[str, float]) -> str:
    names = [k for k in cpu if not k.startswith("machine_") and k != "other_processes"]
    parts = [f"{k} {cpu[k]}" for k in names]
    other = (f"other processes {cpu['other_processes']} (machine busy {cpu['machine_busy']}, "
             f"of which nice {cpu['machine_nice']})")
    return ", ".join([*parts, other])


def verdict(ratios: dict[str, float]) -> str:
    """Plain statement of the goal (ours >= 0.5 of the Loader) against each baseline."""
    a, b = ratios["ours_over_a_bulk_load"], ratios["ours_over_b_build_and_load"]
    def word(r: float) -> str:
        return "met" if r >= GOAL else "NOT met"
    return (f"Goal ours >= {GOAL} x Loader: {word(a)} against (a) the bulk load alone (ratio {a}); "
            f"{word(b)} against (b) build + bulk load (ratio {b}).")


def markdown(summary: dict[str, Any]) -> str:
    """The results as Markdown."""
    m, ours, base = summary["machine"], summary["ours"], summary["baseline"]
    hosts, writes, ratios = summary["hosts"], summary.get("catalog_writes"), summary["ratios"]
    title = (f"## Sync benchmark: {m['date']}, n={m['n']}, {m['hosts']} hosts, {m['nproc']} CPUs, Python "
             f"{m['python']}, pgstac {m.get('pgstac')}, pypgstac {m['packages']['pypgstac']}, Azurite "
             f"{m['azurite']}, load {m['loadavg_start']} -> {m.get('loadavg_end')}")
    out = [title, ""]
    rows = [
        [f"**ours**: sync_container, {m['hosts']} hosts, submit -> {ours['status']} (timed to `job_finished`)",
         ours["seconds"], f"**{ours['items_per_s']}**", ""],
        ["(a) Loader: `bulk_load` alone, items already built", base["bulk_load_s"],
         f"**{base['a_bulk_load_items_per_s']}**", f"**{ratios['ours_over_a_bulk_load']}**"],
        ["(b) Loader: list + download + validate + build_item (1 thread) + collection + `bulk_load`",
         base["build_and_load_s"], f"**{base['b_build_and_load_items_per_s']}**",
         f"**{ratios['ours_over_b_build_and_load']}**"],
        ["&nbsp;&nbsp;of which list + build (download, validate_raster, build_item)", base["build_s"],
         round(m["n"] / base["build_s"], 1), ""],
    ]
    if writes and "error" not in writes:
        rows.append(["diagnostic: ensure_collection + upsert_item per item (1 thread, as each catalog task)",
                     writes["seconds"], writes["items_per_s"], ""])
    out += markdown_table(["run", "s", "items/s", "ours ÷ this"], rows)
    out += [f"**{verdict(ratios)}**", ""]
    ok = (f"collection {ours['collection']}: {ours['items_in_collection']} items (n={m['n']}: "
          f"{'ok' if ours['items_match_n'] else 'MISMATCH'}); job result {ours['result']}; "
          f"Loader collection: {base['items_in_collection']} items")
    out += [ok, ""]
    build = base["build"]["per_item_ms"]
    detail = [["build task (handler) wall time, ms, all hosts (`task_ended.duration_ms`)", _dist(hosts["catalog_task_ms"])],
              ["load task (handler) wall time, ms (ensure_collection + bulk_load of its chunk)", _dist(hosts["load_task_ms"])],
              ["task invocation, ms (host `Executed` lines: handler + claim/commit; includes the list task)",
               _dist(hosts["task_invocation_ms"])],
              ["engine overhead per task, ms (mean invocation - mean handler)", hosts["engine_overhead_ms_mean"]]]
    if hosts.get("catalog_phase"):
        p = hosts["catalog_phase"]
        detail.append(["build phase (first build task start -> last end)",
                       f"{p['seconds']} s, {p['items_per_s']} items/s, mean concurrency {p['mean_concurrency']}"])
    detail += [[f"host{h['host']}: build task attempts (share)", f"{h['catalog_tasks_ended']} ({h['share']:.0%}); {_dist(h['catalog_ms'])}"]
               for h in hosts["per_host"]]
    anomalies = {k: sum(h[k] for h in hosts["per_host"]) for k in
                 ("claimed_elsewhere", "busy_deferred", "retries_scheduled", "messages_ignored", "end_superseded",
                  "warning_lines", "error_lines")}
    detail.append(["duplicates / retries / warnings in host logs", ", ".join(f"{k} {v}" for k, v in anomalies.items())])
    detail += [[f"task attempts ending in error: {k}", v] for k, v in hosts["task_errors"].items()]
    detail += [[f"CPU s during {label} (of {c['capacity_s']} = wall x nproc)", _cpu(c["cpu_s"])]
               for label, c in (("ours", ours["cpu"]), ("baseline (b)", base["cpu"]))]
    req = ours["requests"]
    detail += [["storage requests per item, all hosts (engine + queue delivery), by service",
                ", ".join(f"{k} {v}" for k, v in req["per_task"].items())],
               ["storage requests per item, by kind",
                ", ".join(f"{k} {v}" for k, v in sorted(req["per_task_by_kind"].items(), key=lambda kv: -kv[1]))],
               ["of which the engine's own per item / the queue delivery's per item",
                f"{req['engine_per_task']} / {req['delivery_per_task']}"],
               ["pgstac writes (hosts' logs): single upserts / bulk loads",
                f"{sum(h['pgstac_item_writes'] for h in hosts['per_host'])} / "
                f"{sum(h['pgstac_bulk_loads'] for h in hosts['per_host'])}"]]
    detail += [[f"baseline per item, {k}, ms (1 thread, in process)", _dist(build[k])]
               for k in ("download", "validate_raster", "build_item", "total")]
    if writes and "error" not in writes:
        detail += [["diagnostic ensure_collection, ms", _dist(writes["ensure_collection_ms"])],
                   ["diagnostic upsert_item, ms", _dist(writes["upsert_item_ms"])],
                   ["diagnostic upsert_item mean, first vs last quarter of the items, ms",
                    f"{writes['upsert_item_ms_mean_first_quarter']} vs {writes['upsert_item_ms_mean_last_quarter']}"]]
    out += markdown_table(["detail", "value"], detail)
    out += markdown_table(["timeline of ours (host logs)", "s after submit"],
                  [[t["event"], t["s_after_submit"]] for t in hosts["timeline"]])
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start Azurite and pgstac, measure ours then the baseline, stop everything (by PID, whatever happens)."""
    summary: dict[str, Any] = {"machine": machine_facts(args)}
    azurite = Azurite(location=workdir / "azurite")
    pg: Postgres | None = None
    hosts: list[CountedHost] = []
    catalogue: PgstacRepository | None = None
    try:
        azurite.start()
        log(f"Azurite pid {azurite.process.pid} on ports {azurite.blob_port}/{azurite.queue_port}/{azurite.table_port}")
        started = time.perf_counter()
        pg = Postgres(location=workdir / "pgstac")
        pg.start()
        log(f"pgstac pid {pg.process.pid} on port {pg.port} ({time.perf_counter() - started:.1f} s)")
        catalogue = PgstacRepository(pg.settings, services_stac)
        summary["machine"]["pgstac"] = pgstac_version(catalogue)
        run_id = uuid.uuid4().hex[:8]
        settings = fresh_settings(azurite.connection_string, input_container=f"in-{run_id}",
                                  output_container=f"out-{run_id}", default_collection=f"sync-{run_id}")
        Repositories(settings).ensure()

        log(f"writing and uploading {args.n} GeoTIFFs")
        summary["inputs"] = write_inputs(settings, args.n, workdir / "inputs")
        log(f"inputs: {summary['inputs']}")

        env = host_env(settings, pg)
        logs = [workdir / f"host{i}.log" for i in range(args.hosts)]
        hosts = [CountedHost(env, path) for path in logs]
        for host in hosts:
            host.start()
        log(f"{len(hosts)} hosts up (pids {[h.process.pid for h in hosts]}); ours: sync_container n={args.n}")
        servers = {"azurite": [azurite.process.pid], "postgres": [pg.process.pid]}
        meter = CpuMeter({"hosts": [h.process.pid for h in hosts], **servers})
        ours = measure_ours(settings, hosts, args.n, catalogue, meter)
        log(f"ours: {ours['status']} in {ours['seconds']} s ({ours['items_per_s']} items/s), "
            f"{ours['items_in_collection']} items in the collection")
        for host in hosts:
            host.stop()
        summary["ours"] = ours
        summary["hosts"] = summarize_hosts(logs, ours["job_id"], ours["submitted_at"])

        from pypgstac.load import Loader  # noqa: F401 - imported before timing, as a loader script would have

        log("baseline: build in process, then bulk_load")
        baseline, items = measure_baseline(settings, catalogue, args.n, workdir / "baseline",
                                           CpuMeter(servers))
        summary["baseline"] = baseline
        log(f"baseline: (a) bulk_load {baseline['bulk_load_s']} s, (b) build + load {baseline['build_and_load_s']} s")
        try:
            summary["catalog_writes"] = measure_catalog_writes(catalogue, items, f"{settings.default_collection}-writes")
        except Exception as exc:  # noqa: BLE001 - a diagnostic: record it, keep the main results
            summary["catalog_writes"] = {"error": f"{type(exc).__name__}: {exc}"}
        ips = ours["items_per_s"]
        summary["ratios"] = {"ours_over_a_bulk_load": round(ips / baseline["a_bulk_load_items_per_s"], 3),
                             "ours_over_b_build_and_load": round(ips / baseline["b_build_and_load_items_per_s"], 3),
                             "goal": GOAL}
        summary["verdict"] = verdict(summary["ratios"])
    finally:
        for host in hosts:
            with suppress(Exception):
                host.stop()
        if catalogue is not None:
            with suppress(Exception):
                catalogue.close()
        if pg is not None:
            pg.stop()
            log("pgstac stopped")
        azurite.stop()
        log("Azurite stopped")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of GeoTIFFs (default 200)")
    parser.add_argument("--hosts", type=int, default=2, help="local host processes for ours (default 2)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.hosts < 1:
        parser.error("--n and --hosts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print Markdown and JSON; write the JSON file (results/bench_sync-<date>[-n<n>][-h<h>])."""
    args = parse_args(argv)
    suffix = (f"-n{args.n}" if args.n != 200 else "") + (f"-h{args.hosts}" if args.hosts != 2 else "")
    return run_benchmark("bench_sync", lambda workdir: run(args, workdir), markdown, suffix=suffix)


if __name__ == "__main__":
    sys.exit(main())

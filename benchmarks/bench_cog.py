"""COG benchmark: our threaded ``create_cog`` against GDAL's COG driver and rio-cogeo, and the tiled path
(tiles in parallel on 2 workers, blocks copied at assembly) against one ``create_cog``.

1. single   An 8000 x 8000 x 3 uint8 GeoTIFF with realistic content (smooth gradients, parcels and
            structured texture plus a little noise; written in 512-row strips, so generating it is
            memory-bounded) becomes a DEFLATE COG (512 px blocks, nearest overviews) by:
            - ``ours``: ``services_cog.create_cog`` with default ``CogOptions`` (NUM_THREADS=ALL_CPUS,
              predictor 2, DEFLATE level 1, GDAL_CACHEMAX 64 MB above 2048 x 2048 px);
            - ``gdal_cog``: ``rasterio.shutil.copy(driver="COG")`` (the same GDAL build), GDAL defaults;
            - ``gdal_cog_cache64``: the same with GDAL_CACHEMAX 64 MB, like for like in memory;
            - ``rio_cogeo``: rio-cogeo's ``cog_translate`` with its default deflate profile and defaults
              (what ``rio cogeo create`` does).
            Goals (in-process time, so the interpreter's start, the ``baseline`` row, counts for no
            one): ours / gdal_cog time <= 0.6, ours / gdal_cog_cache64 peak RSS <= 1.0, ours / gdal_cog
            size <= 1.02.
2. tiled    ``process_large_raster``'s work on 2 warm worker processes (the 2 hosts; no queues and no
            blob transfers, local files): plan (4 tiles of 4096 px) on one, the 4 ``process_tile`` on
            both (each takes the next tile when free), ``assemble_tiles`` on one; against one
            ``create_cog`` on a warm worker. Goal: whole job / one create_cog <= 0.8; the assembled COG
            equals ours in every level's pixels and masks and in georeferencing, and is a valid COG.

Every cold step runs in a fresh child process (the parent imports neither numpy nor rasterio); its peak
RSS is the child's VmHWM (from /proc/self/status); a warm worker resets its VmHWM before each task
(``/proc/self/clear_refs``). CPU is user + system time of the whole process (every thread). Peak
scratch is the largest size, sampled every 10 ms, of the step's own folder: for ``create_cog`` its
temporary files and output; for a tile its tile; for the assembly the tiles it reads (hard-linked in,
as the app downloads them), its work files and the output. Runs are repeated (``--repeat``, modes
interleaved) and the median is reported. Not a test: it asserts nothing about time.

    .venv/bin/python benchmarks/bench_cog.py                 # 8000 px, 3 repeats: about 3-5 minutes
    .venv/bin/python benchmarks/bench_cog.py --size 2000 --repeat 1   # quick look

Results: Markdown on stdout, JSON in ``benchmarks/results/bench_cog-<UTC date>[-<size>].json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench_common import machine_facts, progress_log, run_benchmark

BLOCK = 512
CACHE_64MB = 64 * 1024 * 1024
SINGLES = ("ours", "gdal_cog", "gdal_cog_cache64", "rio_cogeo")
GOALS = {"time": 0.6, "rss": 1.0, "size": 1.02, "tiled": 0.8}
log = progress_log("bench_cog")


# ------------------------------------------------------------------------------------------ input
def generate_input(path: Path, size: int, bands: int = 3) -> None:
    """Write a size x size x bands uint8 GeoTIFF strip by strip (512 rows at a time)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(400_000, 5_600_000, 0.5, 0.5),
               "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "interleave": "pixel",
               "BIGTIFF": "IF_SAFER"}
    x = np.arange(size, dtype="float32")[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, BLOCK):
            rows = min(BLOCK, size - row)
            y = np.arange(row, row + rows, dtype="float32")[:, None]
            rng = np.random.default_rng(row)  # noise of about 1 grey level, so DEFLATE behaves as on imagery
            parcels = ((np.floor(x / 410) * 7 + np.floor(y / 370) * 3) % 5) / 5
            strip = np.empty((bands, rows, size), dtype="uint8")
            for b in range(bands):
                smooth = (0.45 + 0.2 * np.sin(x / 900 + b) * np.cos(y / 1300 - b)
                          + 0.1 * np.sin((x + y) / 2500))
                texture = 0.04 * np.sin(x / 23.3 + 3 * np.sin(y / 50)) * np.cos(y / 17.1 + 2 * np.cos(x / 70))
                noise = rng.normal(0, 0.003, (rows, size)).astype("float32")
                value = smooth + 0.18 * parcels * (1 + 0.3 * b) + texture + noise
                strip[b] = np.clip(value * 255, 0, 255).astype("uint8")
            dst.write(strip, window=((row, row + rows), (0, size)))


# ----------------------------------------------------------------------------------- in a child
def peak_rss_mib() -> float:
    """VmHWM: the peak resident set of this process image since exec (or since ``reset_peak_rss``).
    (``ru_maxrss`` would also count the parent's resident memory at fork time.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def reset_peak_rss() -> None:
    """Start VmHWM again from the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def cpu_s() -> float:
    """User + system CPU seconds of this process, every thread."""
    times = os.times()
    return times.user + times.system


class ScratchMeter:
    """The largest size a folder reaches while the meter runs (sampled every 10 ms)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self._stop = folder, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def size(self) -> int:
        total = 0
        for root, _, files in os.walk(self.folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.size())

    def __enter__(self) -> ScratchMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.size())


def run_step(spec: dict[str, Any]) -> dict[str, Any]:
    """One measured step, in this process (modules imported before the clock starts)."""
    import rasterio  # noqa: F401
    import rio_cogeo.cogeo  # noqa: F401

    import services_tiles  # noqa: F401  (imports services_cog, services_assemble, ...)

    mode = spec["mode"]
    scratch = Path(spec.get("scratch") or ".")
    started, cpu_started = time.perf_counter(), cpu_s()
    out: dict[str, Any] = {}
    with ScratchMeter(scratch) as meter:
        out.update(_do(mode, spec))
    out.update(seconds=round(time.perf_counter() - started, 3), cpu_s=round(cpu_s() - cpu_started, 3),
               peak_rss_mib=peak_rss_mib(), peak_scratch_mib=round(meter.peak / 2**20, 1))
    return out


def _do(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    import rasterio
    from rasterio.shutil import copy

    from services_cog import create_cog
    from services_cog_options import CogOptions
    from controller_tiles import TILE_THREADS
    from services_tiles import TileWindow, assemble_tiles, plan_tiles, process_tile

    if mode == "ours":
        return {"result": create_cog(spec["src"], spec["dst"], CogOptions()).model_dump(mode="json")}
    if mode in ("gdal_cog", "gdal_cog_cache64"):
        env = {"GDAL_CACHEMAX": CACHE_64MB} if mode == "gdal_cog_cache64" else {}
        with rasterio.Env(**env):
            copy(spec["src"], spec["dst"], driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK,
                 OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER")
        return {}
    if mode == "rio_cogeo":
        from rio_cogeo import cog_translate
        from rio_cogeo.profiles import cog_profiles

        cog_translate(spec["src"], spec["dst"], cog_profiles.get("deflate"), quiet=True)
        return {}
    if mode == "plan":
        return {"tiles": [t.model_dump() for t in plan_tiles(spec["src"], spec["tile_size"])]}
    if mode == "tile":
        result = process_tile(spec["src"], TileWindow(**spec["tile"]), spec["dst"], CogOptions(threads=TILE_THREADS))
        return {"mib": round(result.file_size / 2**20, 2)}
    if mode == "assemble":
        result = assemble_tiles(spec["tiles"], spec["dst"], CogOptions(tmp_dir=spec["scratch"]))
        return {"warnings": result.warnings}
    if mode == "generate":
        generate_input(Path(spec["dst"]), spec["size"])
        return {}
    if mode == "check":
        return {"outputs": {name: validate(Path(path)) for name, path in spec["outputs"].items()},
                "identical": same_levels(Path(spec["a"]), Path(spec["b"]))}
    if mode != "baseline":
        raise ValueError(f"unknown mode {mode}")
    return {}


def child_main(raw: str) -> None:
    """Entry point of a cold child: one step, its result in a file."""
    spec = json.loads(raw)
    Path(spec["result_file"]).write_text(json.dumps(run_step(spec)))


def worker_main() -> None:
    """Entry point of a warm worker: one JSON step per stdin line, one JSON result per stdout line."""
    for line in sys.stdin:
        reset_peak_rss()
        try:
            result = run_step(json.loads(line))
        except Exception as exc:  # noqa: BLE001 (reported to the parent, which stops)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------- in the parent
def run_child(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run ``run_step(spec)`` in a new interpreter; wall time and CPU of that child."""
    result_file = workdir / f"result-{time.monotonic_ns()}.json"
    command = [sys.executable, __file__, "--child", json.dumps({**spec, "result_file": str(result_file)})]
    started = time.perf_counter()
    with open(workdir / "child.log", "ab") as errors:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec['mode']} failed ({proc.returncode}); see {workdir / 'child.log'}")
    out = json.loads(result_file.read_text())
    result_file.unlink()
    out.update(wall_s=round(wall, 3), child_cpu_s=round(usage.ru_utime + usage.ru_stime, 3))
    return out


class Worker:
    """A warm worker process (``--worker``): steps go in on stdin, results come back on stdout."""

    def __init__(self, workdir: Path) -> None:
        self.errors = open(workdir / "worker.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errors, text=True, bufsize=1)
        self.run({"mode": "baseline", "scratch": str(workdir)})  # warm: modules imported, as a host's are

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        self.proc.stdin.write(json.dumps(spec) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.pid} died; see worker.log")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"{spec['mode']} failed in worker {self.proc.pid}: {out['error']}")
        out["wall_s"] = round(time.perf_counter() - started, 3)
        return out

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.errors.close()


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def validate(path: Path) -> dict[str, Any]:
    """cog_validate (rio-cogeo) + services_raster's COG rules + size of one output."""
    from rio_cogeo import cog_validate

    from services_raster import validate_raster

    valid, errors, warnings = cog_validate(str(path), quiet=True)
    return {"valid": valid and validate_raster(path).is_cog, "errors": errors, "warnings": warnings,
            "mib": round(path.stat().st_size / 2**20, 2)}


def same_levels(a: Path, b: Path) -> bool:
    """Georeferencing, pixels and masks of every level equal (compared block by block)."""
    import numpy as np
    import rasterio

    with rasterio.open(a) as one, rasterio.open(b) as two:
        if (one.crs, one.transform, one.shape, one.count, one.overviews(1)) != (
                two.crs, two.transform, two.shape, two.count, two.overviews(1)):
            return False
        levels = [None, *range(len(one.overviews(1)))]
    for level in levels:
        extra = {} if level is None else {"overview_level": level}
        with rasterio.open(a, **extra) as one, rasterio.open(b, **extra) as two:
            for _, window in one.block_windows(1):
                if not (np.array_equal(one.read(window=window), two.read(window=window))
                        and np.array_equal(one.dataset_mask(window=window), two.dataset_mask(window=window))):
                    return False
    return True


def tiled_job(workers: list[Worker], src: Path, tile_size: int, workdir: Path) -> dict[str, Any]:
    """plan -> tiles on both workers (each takes the next when free) -> assemble; the whole job's wall."""
    started = time.perf_counter()
    steps: dict[str, Any] = {"plan": workers[0].run({"mode": "plan", "src": str(src), "tile_size": tile_size,
                                                     "scratch": str(fresh(workdir / "scratch" / "plan"))})}
    todo = list(steps["plan"]["tiles"])
    lock = threading.Lock()
    failures: list[Exception] = []

    def drain(worker: Worker) -> None:
        while True:
            with lock:
                if not todo or failures:
                    return
                tile = todo.pop(0)
            folder = fresh(workdir / "scratch" / f"tile_{tile['index']}")
            try:
                result = worker.run({"mode": "tile", "src": str(src), "tile": tile, "scratch": str(folder),
                                     "dst": str(folder / "tile.tif")})
            except Exception as exc:  # noqa: BLE001 (re-raised below)
                failures.append(exc)
                return
            steps[f"tile_{tile['index']}"] = {**result, "worker": workers.index(worker)}

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    folder = fresh(workdir / "scratch" / "assemble")
    tiles = []
    for tile in steps["plan"]["tiles"]:  # the app's assemble task downloads them into its scratch
        tiles.append(str(folder / f"tile{tile['index']:05d}.tif"))
        os.link(workdir / "scratch" / f"tile_{tile['index']}" / "tile.tif", tiles[-1])
    steps["assemble"] = workers[0].run({"mode": "assemble", "tiles": tiles, "scratch": str(folder),
                                        "dst": str(workdir / "assembled.tif")})
    total = time.perf_counter() - started
    steps["plan"].pop("tiles")
    return {"tile_size": tile_size, "tiles": len(tiles), "steps": steps, "total_wall_s": round(total, 3)}


def median_run(runs: list[dict[str, Any]], keys=("wall_s", "seconds", "cpu_s", "peak_rss_mib",
                                                 "peak_scratch_mib")) -> dict[str, Any]:
    """Medians over repeats, with every run kept."""
    return {**{k: round(statistics.median(r[k] for r in runs), 3) for k in keys},
            "runs": [{k: r[k] for k in keys} for r in runs]}


def measure(size: int, repeat: int, workdir: Path) -> dict[str, Any]:
    """Both sections; returns the summary."""
    src = workdir / "input.tif"
    generated = run_child({"mode": "generate", "dst": str(src), "size": size}, workdir)
    log(f"input {size}x{size}x3 written in {generated['seconds']} s ({src.stat().st_size / 2**20:.0f} MiB)")
    cold: dict[str, list] = {mode: [] for mode in ("baseline", *SINGLES)}
    warm_single: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    tile_size = math.ceil(size / 2 / BLOCK) * BLOCK
    for i in range(repeat):
        for mode in ("baseline", *SINGLES[i % 4:], *SINGLES[:i % 4]):
            folder = fresh(workdir / "scratch" / mode)
            cold[mode].append(run_child({"mode": mode, "src": str(src), "dst": str(folder / f"{mode}.tif"),
                                         "scratch": str(folder)}, workdir))
            if mode != "baseline":
                shutil.copyfile(folder / f"{mode}.tif", workdir / f"{mode}.tif")
            shutil.rmtree(folder)
            log(f"repeat {i + 1}/{repeat} {mode}: {cold[mode][-1]['seconds']} s, cpu {cold[mode][-1]['cpu_s']} s, "
                f"{cold[mode][-1]['peak_rss_mib']} MiB, scratch {cold[mode][-1]['peak_scratch_mib']} MiB")
        workers = [Worker(workdir), Worker(workdir)]
        try:
            for step in (("single", "tiled") if i % 2 == 0 else ("tiled", "single")):
                if step == "single":
                    folder = fresh(workdir / "scratch" / "warm")
                    warm_single.append(workers[0].run({"mode": "ours", "src": str(src), "scratch": str(folder),
                                                       "dst": str(folder / "warm.tif")}))
                    shutil.rmtree(folder)
                    log(f"repeat {i + 1}/{repeat} warm create_cog: {warm_single[-1]['wall_s']} s")
                else:
                    jobs.append(tiled_job(workers, src, tile_size, workdir))
                    log(f"repeat {i + 1}/{repeat} tiled job on 2 workers: {jobs[-1]['total_wall_s']} s")
        finally:
            for worker in workers:
                worker.stop()
    outputs = {mode: str(workdir / f"{mode}.tif") for mode in SINGLES}
    outputs["assembled"] = str(workdir / "assembled.tif")
    checks = run_child({"mode": "check", "outputs": outputs, "a": outputs["ours"], "b": outputs["assembled"]},
                       workdir)
    single = {mode: {**median_run(runs), **checks["outputs"].get(mode, {})} for mode, runs in cold.items()}
    tiled = summarise_tiled(jobs, median_run(warm_single))
    tiled.update(identical_to_single=checks["identical"], output=checks["outputs"]["assembled"])
    return {"input": {"mib": round(src.stat().st_size / 2**20, 1), "generate_s": generated["seconds"]},
            "single": single, "ratios": ratios(single, tiled), "tiled": tiled}


def ratios(single: dict[str, Any], tiled: dict[str, Any]) -> dict[str, Any]:
    """The goals' ratios (in-process seconds; see the module docstring)."""
    ours, gdal, gdal64, rio = (single[m] for m in SINGLES)

    def r(a: float, b: float) -> float:
        return round(a / b, 3)

    return {"time_ours_over_gdal_cog": r(ours["seconds"], gdal["seconds"]),
            "cpu_ours_over_gdal_cog": r(ours["cpu_s"], gdal["cpu_s"]),
            "rss_ours_over_gdal_cog_cache64": r(ours["peak_rss_mib"], gdal64["peak_rss_mib"]),
            "rss_ours_over_gdal_cog": r(ours["peak_rss_mib"], gdal["peak_rss_mib"]),
            "size_ours_over_gdal_cog": r(ours["mib"], gdal["mib"]),
            "time_ours_over_rio_cogeo": r(ours["seconds"], rio["seconds"]),
            "rss_ours_over_rio_cogeo": r(ours["peak_rss_mib"], rio["peak_rss_mib"]),
            "size_ours_over_rio_cogeo": r(ours["mib"], rio["mib"]),
            "tiled_job_over_create_cog": tiled["job_over_single"],
            "assemble_over_create_cog": tiled["assemble_over_single"], "goals": GOALS}


def summarise_tiled(jobs: list[dict[str, Any]], single: dict[str, Any]) -> dict[str, Any]:
    """Median per step over repeats, and the whole job against the warm single create_cog."""
    names = list(jobs[0]["steps"])
    keys = ("wall_s", "seconds", "cpu_s", "peak_rss_mib", "peak_scratch_mib")
    steps = {name: median_run([j["steps"][name] for j in jobs], keys) for name in names}
    total = round(statistics.median(j["total_wall_s"] for j in jobs), 3)
    cpu = round(statistics.median(sum(s["cpu_s"] for s in j["steps"].values()) for j in jobs), 3)
    return {"tile_size": jobs[0]["tile_size"], "tiles": jobs[0]["tiles"], "steps": steps, "total_wall_s": total,
            "total_cpu_s": cpu, "single": single, "job_over_single": round(total / single["wall_s"], 3),
            "cpu_over_single": round(cpu / single["cpu_s"], 3),
            "assemble_over_single": round(steps["assemble"]["seconds"] / single["seconds"], 3),
            "peak_rss_mib_max": max(s["peak_rss_mib"] for s in steps.values()),
            "peak_scratch_mib_max": max(s["peak_scratch_mib"] for s in steps.values()),
            "warnings": jobs[-1]["steps"]["assemble"].get("warnings", [])}


# ----------------------------------------------------------------------------------------- report
def machine(size: int, repeat: int) -> dict[str, Any]:
    """What the numbers were measured on (GDAL asked in a child: this process imports no rasterio)."""
    gdal = subprocess.run([sys.executable, "-c", "import rasterio; print(rasterio.__gdal_version__)"],
                          capture_output=True, text=True, check=False).stdout.strip()
    return machine_facts(("rasterio", "rio-cogeo", "numpy"), stack=False, size=size, repeat=repeat, gdal=gdal)


def markdown(summary: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    s, r, t, m = summary["single"], summary["ratios"], summary["tiled"], summary["machine"]
    ok = {True: "✓", False: "✗"}
    lines = [f"### 1. {m['size']} x {m['size']} x 3 uint8 -> DEFLATE COG (median of {m['repeat']}; load "
             f"{m['loadavg_start'][0]} -> {m['loadavg_end'][0]} on {m['nproc']} cores)", "",
             "| run | in-process s | CPU s | wall s (cold child) | peak RSS MiB | peak scratch MiB | output MiB "
             "| valid COG |", "|---|---|---|---|---|---|---|---|"]
    for mode, run in s.items():
        lines.append(f"| {mode} | {run['seconds']} | {run['cpu_s']} | {run['wall_s']} | {run['peak_rss_mib']} | "
                     f"{run['peak_scratch_mib']} | {run.get('mib', '-')} | {run.get('valid', '-')} |")
    lines += ["", f"ours / gdal_cog: time **{r['time_ours_over_gdal_cog']}** (goal <= 0.6 "
                  f"{ok[r['time_ours_over_gdal_cog'] <= 0.6]}), CPU {r['cpu_ours_over_gdal_cog']}, size "
                  f"**{r['size_ours_over_gdal_cog']}** (goal <= 1.02 {ok[r['size_ours_over_gdal_cog'] <= 1.02]}); "
                  f"ours / gdal_cog_cache64: peak RSS **{r['rss_ours_over_gdal_cog_cache64']}** (goal <= 1.0 "
                  f"{ok[r['rss_ours_over_gdal_cog_cache64'] <= 1.0]}); ours / rio_cogeo: time "
                  f"{r['time_ours_over_rio_cogeo']}, RSS {r['rss_ours_over_rio_cogeo']}, size "
                  f"{r['size_ours_over_rio_cogeo']}", "",
              f"### 2. Tiled: {t['tiles']} tiles of {t['tile_size']} px on 2 warm workers vs one create_cog", "",
              "| step | wall s | in-process s | CPU s | peak RSS MiB | peak scratch MiB |", "|---|---|---|---|---|---|"]
    for name, step in t["steps"].items():
        lines.append(f"| {name} | {step['wall_s']} | {step['seconds']} | {step['cpu_s']} | {step['peak_rss_mib']} | "
                     f"{step['peak_scratch_mib']} |")
    w = t["single"]
    lines += [f"| **whole job (plan, tiles in parallel, assemble)** | **{t['total_wall_s']}** | | {t['total_cpu_s']} "
              f"| {t['peak_rss_mib_max']} (max) | {t['peak_scratch_mib_max']} (max) |",
              f"| one create_cog (warm worker) | {w['wall_s']} | {w['seconds']} | {w['cpu_s']} | {w['peak_rss_mib']} "
              f"| {w['peak_scratch_mib']} |", "",
              f"whole job / create_cog: **{t['job_over_single']}** (goal <= 0.8 {ok[t['job_over_single'] <= 0.8]}); "
              f"CPU {t['cpu_over_single']}; assemble / create_cog: {t['assemble_over_single']}; assembled == "
              f"ours (every level's pixels and masks, georeferencing): **{t['identical_to_single']}**; valid COG: "
              f"{t['output']['valid']}; warnings: {t['warnings'] or 'none'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one child step with --child, or a warm worker with --worker)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8000, help="raster width = height in px (default 8000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: temp, removed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    if args.worker:
        worker_main()
        return 0

    def run(workdir: Path) -> dict[str, Any]:
        return {"machine": machine(args.size, args.repeat), **measure(args.size, args.repeat, workdir)}

    return run_benchmark("bench_cog", run, markdown, suffix="" if args.size == 8000 else f"-{args.size}",
                         workdir=args.workdir, json_keys=("ratios",))


if __name__ == "__main__":
    sys.exit(main())

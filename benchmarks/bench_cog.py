"""COG benchmark: our ``create_cog`` against GDAL's own COG driver, and the tiled path against one task.

1. single   An 8000 x 8000 x 3 uint8 GeoTIFF with realistic content (smooth gradients, parcels and
            structured texture plus a little noise; written in 512-row strips, so generating it is
            memory-bounded) becomes a DEFLATE COG (512 px tiles, nearest overviews) by:
            - ``ours``: ``services_cog.create_cog`` with default ``CogOptions`` (rio-cogeo,
              ``in_memory=False`` and GDAL_CACHEMAX 64 MB above 2048 x 2048 px);
            - ``gdal_cog``: ``rasterio.shutil.copy(driver="COG")`` (the same GDAL build), GDAL defaults;
            - ``gdal_cog_cache64``: the same with GDAL_CACHEMAX 64 MB, like for like.
            Ratios ours / gdal_cog: time (goal <= 1.1) and peak RSS (goal <= 1.25).
2. tiled    ``plan_tiles`` (4 tiles) -> ``process_tile`` x 4 -> ``assemble_tiles``, each step in its own
            process, against the single ``create_cog``; the two outputs are compared block by block.

Every step runs in a fresh child process (the parent imports neither numpy nor rasterio); its peak
RSS is the child's VmHWM (peak resident set since exec, from /proc/self/status), which includes the
interpreter and imports (the ``baseline`` child measures those alone). ``ru_maxrss`` from
``os.wait4`` is recorded too: it also counts the parent's resident set at fork time. Runs are
repeated (``--repeat``, modes interleaved) and the median is reported. Every output is checked with
``rio_cogeo.cog_validate``. Not a test: it asserts nothing about time.

    .venv/bin/python benchmarks/bench_cog.py                 # 8000 px, 3 repeats: about 3-4 minutes
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
import time
from pathlib import Path
from typing import Any

from bench_common import machine_facts, progress_log, run_benchmark

BLOCK = 512
CACHE_64MB = 64 * 1024 * 1024
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


# ----------------------------------------------------------------------------------- child process
def peak_rss_mib() -> float:
    """VmHWM: the peak resident set of this process image since exec. (``ru_maxrss`` would also count
    the parent's resident memory at fork time: Linux carries that high-water mark across exec.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measured step, in this (fresh) process."""
    import rasterio
    from rasterio.shutil import copy

    from services_cog import CogOptions, create_cog
    from services_tiles import TileWindow, assemble_tiles, plan_tiles, process_tile

    mode = spec["mode"]
    started = time.perf_counter()
    out: dict[str, Any] = {}
    if mode == "ours":
        out["result"] = create_cog(spec["src"], spec["dst"], CogOptions()).model_dump(mode="json")
    elif mode in ("gdal_cog", "gdal_cog_cache64"):
        env = {"GDAL_CACHEMAX": CACHE_64MB} if mode == "gdal_cog_cache64" else {}
        with rasterio.Env(**env):
            copy(spec["src"], spec["dst"], driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK,
                 OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER")
    elif mode == "plan":
        out["tiles"] = [t.model_dump() for t in plan_tiles(spec["src"], spec["tile_size"])]
    elif mode == "tile":
        process_tile(spec["src"], TileWindow(**spec["tile"]), spec["dst"])
    elif mode == "assemble":
        assemble_tiles(spec["tiles"], spec["dst"], CogOptions())
    elif mode == "generate":
        generate_input(Path(spec["dst"]), spec["size"])
    elif mode == "check":
        out["outputs"] = {name: validate(Path(path)) for name, path in spec["outputs"].items()}
        out["identical"] = same_pixels(Path(spec["a"]), Path(spec["b"]))
    elif mode != "baseline":
        raise ValueError(f"unknown mode {mode}")
    out["seconds"] = round(time.perf_counter() - started, 3)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def run_child(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run ``child(spec)`` in a new interpreter; wall time and kernel-measured peak RSS of that child."""
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
    out.update(wall_s=round(wall, 3), ru_maxrss_mib=round(usage.ru_maxrss / 1024, 1))
    return out


def child_main(raw: str) -> None:
    """Entry point of a child process."""
    spec = json.loads(raw)
    Path(spec["result_file"]).write_text(json.dumps(child(spec)))


# ------------------------------------------------------------------------------------- measurement
def validate(path: Path) -> dict[str, Any]:
    """cog_validate + size of one output."""
    from rio_cogeo import cog_validate

    valid, errors, warnings = cog_validate(str(path), quiet=True)
    return {"valid": valid, "errors": errors, "warnings": warnings,
            "mib": round(path.stat().st_size / 2**20, 1)}


def same_pixels(a: Path, b: Path) -> bool:
    """Full-resolution pixels, masks and georeferencing equal (compared block by block)."""
    import numpy as np
    import rasterio

    with rasterio.open(a) as one, rasterio.open(b) as two:
        if (one.crs, one.transform, one.shape, one.count) != (two.crs, two.transform, two.shape, two.count):
            return False
        for _, window in one.block_windows(1):
            if not np.array_equal(one.read(window=window), two.read(window=window)):
                return False
            if not np.array_equal(one.dataset_mask(window=window), two.dataset_mask(window=window)):
                return False
    return True


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median wall time and peak RSS over repeats, with every run kept."""
    return {"wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
            "seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in runs), 1),
            "runs": [{k: r[k] for k in ("wall_s", "seconds", "peak_rss_mib")} for r in runs]}


def measure(size: int, repeat: int, workdir: Path) -> dict[str, Any]:
    """Both sections; returns the summary."""
    src = workdir / "input.tif"
    generated = run_child({"mode": "generate", "dst": str(src), "size": size}, workdir)
    log(f"input {size}x{size}x3 written in {generated['seconds']} s ({src.stat().st_size / 2**20:.0f} MiB)")
    singles = ["ours", "gdal_cog", "gdal_cog_cache64"]
    runs: dict[str, list] = {mode: [] for mode in ["baseline", *singles]}
    tiled_runs: list[dict[str, Any]] = []
    tile_size = math.ceil(size / 2 / BLOCK) * BLOCK
    for i in range(repeat):
        order = singles[i % 3:] + singles[:i % 3]
        for mode in ["baseline", *order]:
            runs[mode].append(run_child({"mode": mode, "src": str(src), "dst": str(workdir / f"{mode}.tif")},
                                        workdir))
            log(f"repeat {i + 1}/{repeat} {mode}: {runs[mode][-1]['wall_s']} s, "
                f"{runs[mode][-1]['peak_rss_mib']} MiB")
        tiled_runs.append(measure_tiled(src, tile_size, workdir))
        log(f"repeat {i + 1}/{repeat} tiled: {tiled_runs[-1]['total_wall_s']} s")
    outputs = {mode: str(workdir / f"{mode}.tif") for mode in singles}
    outputs["assembled"] = str(workdir / "assembled.tif")
    checks = run_child({"mode": "check", "outputs": outputs, "a": outputs["ours"], "b": outputs["assembled"]},
                       workdir)
    single = {mode: {**median_run(runs[mode]), **checks["outputs"].get(mode, {})} for mode in runs}
    ours, gdal, gdal64 = single["ours"], single["gdal_cog"], single["gdal_cog_cache64"]
    ratios = {"time_ours_over_gdal_cog": round(ours["wall_s"] / gdal["wall_s"], 3),
              "rss_ours_over_gdal_cog": round(ours["peak_rss_mib"] / gdal["peak_rss_mib"], 3),
              "time_ours_over_gdal_cog_cache64": round(ours["wall_s"] / gdal64["wall_s"], 3),
              "rss_ours_over_gdal_cog_cache64": round(ours["peak_rss_mib"] / gdal64["peak_rss_mib"], 3),
              "goals": {"time": 1.1, "rss": 1.25}}
    tiled = summarise_tiled(tiled_runs, single["ours"])
    tiled["identical_to_single"] = checks["identical"]
    tiled["output"] = checks["outputs"]["assembled"]
    return {"input": {"mib": round(src.stat().st_size / 2**20, 1), "generate_s": generated["seconds"]},
            "single": single, "ratios": ratios, "tiled": tiled}


def measure_tiled(src: Path, tile_size: int, workdir: Path) -> dict[str, Any]:
    """plan -> 4 x process_tile -> assemble, each step in its own process."""
    tiles_dir = workdir / "tiles"
    shutil.rmtree(tiles_dir, ignore_errors=True)
    plan = run_child({"mode": "plan", "src": str(src), "tile_size": tile_size}, workdir)
    steps = {"plan": plan}
    paths = []
    for tile in plan["tiles"]:
        path = tiles_dir / f"tile-{tile['index']}.tif"
        steps[f"tile_{tile['index']}"] = run_child({"mode": "tile", "src": str(src), "tile": tile,
                                                    "dst": str(path)}, workdir)
        paths.append(str(path))
    steps["assemble"] = run_child({"mode": "assemble", "tiles": paths, "dst": str(workdir / "assembled.tif")},
                                  workdir)
    return {"tile_size": tile_size, "tiles": len(paths), "steps": steps,
            "total_wall_s": round(sum(s["wall_s"] for s in steps.values()), 3)}


def summarise_tiled(runs: list[dict[str, Any]], single: dict[str, Any]) -> dict[str, Any]:
    """Median per step over repeats."""
    names = list(runs[0]["steps"])
    steps = {name: median_run([r["steps"][name] for r in runs]) for name in names}
    tile_steps = [steps[n] for n in names if n.startswith("tile_")]
    total = round(statistics.median(r["total_wall_s"] for r in runs), 3)
    return {"tile_size": runs[0]["tile_size"], "tiles": runs[0]["tiles"], "steps": steps,
            "total_wall_s": total, "tile_wall_s_max": max(s["wall_s"] for s in tile_steps),
            "peak_rss_mib_max": max(s["peak_rss_mib"] for s in steps.values()),
            "single_wall_s": single["wall_s"], "single_peak_rss_mib": single["peak_rss_mib"],
            "critical_path_s": round(steps["plan"]["wall_s"] + max(s["wall_s"] for s in tile_steps)
                                     + steps["assemble"]["wall_s"], 3)}


# ----------------------------------------------------------------------------------------- report
def machine(size: int, repeat: int) -> dict[str, Any]:
    """What the numbers were measured on (GDAL asked in a child: this process imports no rasterio)."""
    gdal = subprocess.run([sys.executable, "-c", "import rasterio; print(rasterio.__gdal_version__)"],
                          capture_output=True, text=True, check=False).stdout.strip()
    return machine_facts(("rasterio", "rio-cogeo", "numpy"), stack=False, size=size, repeat=repeat, gdal=gdal)


def markdown(summary: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    s, r, t = summary["single"], summary["ratios"], summary["tiled"]
    size = summary["machine"]["size"]
    repeat = summary["machine"]["repeat"]
    lines = [f"### 1. {size} x {size} x 3 uint8 -> DEFLATE COG (median of {repeat})", "",
             "| run | wall s | in-process s | peak RSS MiB | output MiB | valid COG |",
             "|---|---|---|---|---|---|"]
    for mode, run in s.items():
        lines.append(f"| {mode} | {run['wall_s']} | {run['seconds']} | {run['peak_rss_mib']} | "
                     f"{run.get('mib', '-')} | {run.get('valid', '-')} |")
    lines += ["", (f"ours / gdal_cog: time **{r['time_ours_over_gdal_cog']}** (goal <= 1.1), peak RSS "
                   f"**{r['rss_ours_over_gdal_cog']}** (goal <= 1.25); ours / gdal_cog_cache64: time "
                   f"{r['time_ours_over_gdal_cog_cache64']}, RSS {r['rss_ours_over_gdal_cog_cache64']}"), "",
              f"### 2. Tiled: {t['tiles']} tiles of {t['tile_size']} px vs one create_cog", "",
              "| step | wall s | in-process s | peak RSS MiB |", "|---|---|---|---|"]
    for name, step in t["steps"].items():
        lines.append(f"| {name} | {step['wall_s']} | {step['seconds']} | {step['peak_rss_mib']} |")
    lines += [f"| **all steps, one after another** | {t['total_wall_s']} | | {t['peak_rss_mib_max']} (max) |",
              f"| plan + slowest tile + assemble (tiles in parallel) | {t['critical_path_s']} | | |",
              f"| single create_cog | {t['single_wall_s']} | | {t['single_peak_rss_mib']} |", "",
              (f"assembled == single (pixels, masks, georeferencing): **{t['identical_to_single']}**; "
               f"assembled valid COG: {t['output']['valid']}")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one child step with --child)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8000, help="raster width = height in px (default 8000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: temp, removed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    def run(workdir: Path) -> dict[str, Any]:
        return {"machine": machine(args.size, args.repeat), **measure(args.size, args.repeat, workdir)}

    return run_benchmark("bench_cog", run, markdown, suffix="" if args.size == 8000 else f"-{args.size}",
                         workdir=args.workdir, json_keys=("ratios",))


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers for the geospatial tests: where the shared test data lives, synthetic rasters
written with ``rasterio.open(path, "w", ...)``, and a private pgstac server.

Import it from a test module (``import conftest_geo``); it defines no fixtures of its own so that
each module decides the scope of what it starts.
"""
from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "testdata"
RASTERS_DIR = SHARED / "rasters"
SCHEMAS_DIR = SHARED / "stac-schemas"
REAL_RASTERS = sorted(RASTERS_DIR.glob("*.tif")) if RASTERS_DIR.is_dir() else []

needs_rasters = pytest.mark.skipif(not REAL_RASTERS, reason=f"shared test rasters not found at {RASTERS_DIR} "
                                   f"(a checkout without ../shared/testdata)")
needs_schemas = pytest.mark.skipif(not SCHEMAS_DIR.is_dir(), reason=f"STAC extension schemas not found at "
                                   f"{SCHEMAS_DIR} (a checkout without ../shared/testdata)")

# A Lambert azimuthal equal-area CRS no authority knows (centre 47N 11E, false origin 1000 km).
CUSTOM_LAEA_WKT = (
    'PROJCS["Custom LAEA Alps",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Azimuthal_Equal_Area"],PARAMETER["latitude_of_center",47.123],'
    'PARAMETER["longitude_of_center",11.456],PARAMETER["false_easting",1000000],'
    'PARAMETER["false_northing",1000000],UNIT["metre",1]]')


def smooth_image(bands: int, height: int, width: int, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """Gradients plus a little texture: compresses like imagery, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype("float64")
    out = []
    for b in range(bands):
        wave = np.sin((x + 37 * b) / (40 + 13 * b)) * np.cos((y - 11 * b) / (55 + 7 * b))
        base = (x / max(width, 1) + y / max(height, 1)) / 2
        value = 0.6 * base + 0.3 * (wave + 1) / 2 + 0.1 * rng.random((height, width))
        out.append(value)
    stack = np.stack(out)
    if np.dtype(dtype).kind in "ui":
        top = min(np.iinfo(dtype).max, 60000)
        return (stack * top).astype(dtype)
    return (stack * 1000 - 200).astype(dtype)


def write_raster(path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32618",
                 transform=None, nodata=None, mask: np.ndarray | None = None,
                 colorinterp=None, tags: dict | None = None, **profile) -> Path:
    """Write ``data`` (bands, rows, cols) as a GeoTIFF; ``transform=False`` writes none."""
    bands, height, width = data.shape
    kwargs = {"driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": str(data.dtype),
              "nodata": nodata, **profile}
    if crs is not None:
        kwargs["crs"] = crs
    if transform is not False:
        kwargs["transform"] = transform or from_origin(500_000, 4_000_000, 30, 30)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **kwargs) as dst:
        dst.write(data)
        if colorinterp:
            dst.colorinterp = colorinterp
        if mask is not None:
            dst.write_mask(mask)
        if tags:
            dst.update_tags(**tags)
    return path


def unique(prefix: str) -> str:
    """A name no other test (or run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def running_pgstac(location: Path) -> Iterator[object]:
    """A private PostgreSQL + PostGIS + pgstac (tests/postgres_proc.py), stopped by PID at the end.

    Skips the caller when PostgreSQL/PostGIS are not installed.
    """
    from postgres_proc import Postgres, pg_bin

    try:
        pg_bin()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    share = subprocess.run([str(pg_bin() / "pg_config"), "--sharedir"], capture_output=True, text=True,
                           check=False).stdout.strip()
    if not share or not (Path(share) / "extension" / "postgis.control").exists():
        pytest.skip("PostGIS is not installed: apt-get install postgresql-15-postgis-3 (./dev.sh does)")
    server = Postgres(location=location).start()
    try:
        yield server
    finally:
        server.stop()

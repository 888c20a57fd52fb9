"""Shared helpers for the geospatial tests: where the shared test data lives, synthetic rasters
written with ``rasterio.open(path, "w", ...)`` (plain, masked, ungeoreferenced, geostationary, polar),
hostile files (VRTs reading a local secret or a URL), and a private pgstac server.

Import it from a test module (``from conftest_geo import ...``); it defines no fixtures of its own so that
each module decides the scope of what it starts. Helpers that are not geospatial live in support.py.
"""
from __future__ import annotations

import math
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_bounds, from_origin

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


# ------------------------------------------------------------------------------------ real-world scenes
UTM33 = CRS.from_epsg(32633)


GEOS = "+proj=geos +h=35785831 +lon_0=0 +x_0=0 +y_0=0 +ellps=WGS84 +sweep=y +units=m +no_defs +type=crs"


GEOS_HALF = 5_434_894.7  # GOES-R full disk: half the scan extent in metres (the disk fills the grid)


def masked_scene(folder: Path, *, jpeg: bool = False, size: int = 600) -> tuple[Path, np.ndarray]:
    """``scene.tif`` with its mask in ``scene.tif.msk`` (GDAL_TIFF_INTERNAL_MASK=NO), and the mask."""
    data = smooth_image(3, size, size)
    mask = np.zeros((size, size), "uint8")
    mask[size // 6: size - size // 5, size // 10: size - size // 3] = 255
    path = folder / "scene.tif"
    profile = {"compress": "jpeg", "photometric": "ycbcr"} if jpeg else {"compress": "deflate"}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(
            path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=UTM33,
            transform=from_origin(400_000, 5_000_000, 10, 10), tiled=True, blockxsize=256, blockysize=256,
            **profile) as dst:
        dst.write(data)
        dst.write_mask(mask)
    assert (folder / "scene.tif.msk").exists()
    return path, mask


AUX_GEOREF = f"""<PAMDataset>
  <SRS dataAxisToSRSAxisMapping="1,2">{UTM33.to_wkt()}</SRS>
  <GeoTransform>  4.0e+05,  2.0e+01,  0.0e+00,  5.0e+06,  0.0e+00, -2.0e+01</GeoTransform>
  <Metadata><MDI key="TIFFTAG_DATETIME">2019:07:01 10:20:30</MDI><MDI key="SOURCE">scanner 7</MDI></Metadata>
  <PAMRasterBand band="1">
    <NoDataValue>0</NoDataValue>
    <Histograms><HistItem><HistMin>0</HistMin><HistMax>255</HistMax><BucketCount>1</BucketCount>
      <HistCounts>1</HistCounts></HistItem></Histograms>
  </PAMRasterBand>
</PAMDataset>
"""


def bare_scene(folder: Path, name: str = "bare.tif") -> Path:
    """An ungeoreferenced TIFF (no CRS, no transform), with zeros along one edge."""
    data = smooth_image(1, 200, 300)
    data[:, :, :20] = 0
    return write_raster(folder / name, data, crs=None, transform=False)


def geos_disk(folder: Path, size: int = 256, lon_0: float = 0.0) -> Path:
    crs = GEOS.replace("+lon_0=0", f"+lon_0={lon_0}")
    return write_raster(folder / f"geos{lon_0:g}.tif", smooth_image(1, size, size), crs=crs,
                        transform=from_bounds(-GEOS_HALF, -GEOS_HALF, GEOS_HALF, GEOS_HALF, size, size))


def polar_grid(folder: Path) -> Path:
    """EPSG:3413 (NSIDC sea ice polar stereographic north), 4000 km square centred on the pole."""
    return write_raster(folder / "arctic.tif", smooth_image(1, 200, 200), crs="EPSG:3413",
                        transform=from_bounds(-2e6, -2e6, 2e6, 2e6, 200, 200))


def check_geojson(geometry: dict, bbox: list[float]) -> None:
    """Valid, closed rings within [-180, 180] x [-90, 90]; the bbox within the same."""
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    assert geometry["type"] in ("Polygon", "MultiPolygon") and polygons
    for polygon in polygons:
        ring = polygon[0]
        assert len(ring) >= 4 and ring[0] == ring[-1]
        for lon, lat in ring:
            assert -180 <= lon <= 180 and -90 <= lat <= 90 and math.isfinite(lon + lat)
    west, south, east, north = bbox
    assert -180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90


# ------------------------------------------------------------------------------------ hostile files
SECRET = "GEOETL-SECRET-" + uuid.uuid4().hex


def secret_file(tmp: Path) -> Path:
    path = tmp / "secret.txt"
    path.write_text((SECRET + "\n") * 8)
    return path


def raw_vrt(source: str, width: int = 64) -> str:
    """A VRT whose band is the raw bytes of ``source`` (any file GDAL can read)."""
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="4"><SRS>EPSG:4326</SRS>'
            f"<GeoTransform>0, 1, 0, 0, 0, -1</GeoTransform>"
            f'<VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">'
            f'<SourceFilename relativetoVRT="0">{source}</SourceFilename><ImageOffset>0</ImageOffset>'
            f"<PixelOffset>1</PixelOffset><LineOffset>{width}</LineOffset></VRTRasterBand></VRTDataset>")


def remote_vrt(url: str) -> str:
    """A VRT whose band is read from ``/vsicurl/<url>``."""
    return (f'<VRTDataset rasterXSize="64" rasterYSize="4"><SRS>EPSG:4326</SRS>'
            f"<GeoTransform>0, 1, 0, 0, 0, -1</GeoTransform><VRTRasterBand dataType=\"Byte\" band=\"1\">"
            f'<SimpleSource><SourceFilename relativeToVRT="0">/vsicurl/{url}</SourceFilename>'
            f"<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>")


def no_secret_in(*texts: str) -> bool:
    return all(SECRET not in (t or "") for t in texts)

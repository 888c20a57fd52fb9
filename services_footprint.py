"""Footprints in EPSG:4326 for STAC: the pixel outline densified, reprojected, split at the
antimeridian (a MultiPolygon, bbox west > east), closed over a pole it encircles. Pure."""
from __future__ import annotations

import math

from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points

from errors import TaskError
from services_gdal import RASTER_ERRORS, gdal_message
from services_raster import DENSIFY_POINTS, RasterInfo

Ring = list[tuple[float, float]]


def footprint_wgs84(info: RasterInfo, densify: int = DENSIFY_POINTS) -> tuple[dict, list[float]]:
    """(GeoJSON geometry, bbox) of the raster outline in EPSG:4326, antimeridian- and pole-safe."""
    transform = Affine(*info.transform)
    n = max(densify, 2)
    w, h = info.width, info.height
    pixels = ([(w * i / n, 0.0) for i in range(n)] + [(w, h * i / n) for i in range(n)]
              + [(w - w * i / n, h) for i in range(n)] + [(0.0, h - h * i / n) for i in range(n)])
    xs, ys = zip(*(transform @ p for p in pixels), strict=True)
    try:
        lons, lats = transform_points(CRS.from_wkt(info.crs_wkt), "EPSG:4326", list(xs), list(ys))
    except RASTER_ERRORS as exc:
        raise TaskError(f"cannot reproject the outline of {info.path}: {gdal_message(exc)}") from exc
    if not all(math.isfinite(v) for v in (*lons, *lats)):
        raise TaskError(f"cannot reproject the outline of {info.path}: some corners fall outside the "
                        f"CRS's area of use")
    ring = _unwrap(list(zip(lons, lats, strict=True)))
    parts = [p for shift in (-720, -360, 0, 360, 720)
             if len(p := _clip_lon([(x + shift, y) for x, y in ring])) >= 3 and abs(_area(p)) > 1e-12]
    parts = [_close(_ccw([(round(x, 9), round(y, 9)) for x, y in p])) for p in parts]
    if len(parts) == 1:
        geometry = {"type": "Polygon", "coordinates": [[list(c) for c in parts[0]]]}
    else:
        geometry = {"type": "MultiPolygon", "coordinates": [[[list(c) for c in p]] for p in parts]}
    return geometry, _bbox_of(parts)


def _unwrap(points: Ring) -> Ring:
    """Make longitudes continuous; close over the pole when the outline goes once around the globe."""
    out = [points[0]]
    for lon, lat in points[1:]:
        prev = out[-1][0]
        out.append((prev + ((lon - prev + 180.0) % 360.0) - 180.0, lat))
    first_lon = points[0][0]
    closing = out[-1][0] + ((first_lon - out[-1][0] + 180.0) % 360.0) - 180.0
    if abs(closing - first_lon) > 180.0:  # wound around a pole: walk over it to close the ring
        pole = 90.0 if sum(lat for _, lat in points) > 0 else -90.0
        out += [(closing, out[-1][1]), (closing, pole), (first_lon, pole)]
    return out


def _clip_lon(ring: Ring) -> Ring:
    """Sutherland-Hodgman clip of a ring to -180 <= lon <= 180."""
    for edge, inside in ((-180.0, lambda x: x >= -180.0), (180.0, lambda x: x <= 180.0)):
        if not ring:
            return ring
        clipped: Ring = []
        for i, current in enumerate(ring):
            previous = ring[i - 1]
            if inside(current[0]):
                if not inside(previous[0]):
                    clipped.append(_cross(previous, current, edge))
                clipped.append(current)
            elif inside(previous[0]):
                clipped.append(_cross(previous, current, edge))
        ring = clipped
    return ring


def _cross(a: tuple[float, float], b: tuple[float, float], lon: float) -> tuple[float, float]:
    t = (lon - a[0]) / (b[0] - a[0])
    return (lon, a[1] + t * (b[1] - a[1]))


def _area(ring: Ring) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1], strict=True)) / 2


def _ccw(ring: Ring) -> Ring:
    ring = [p for i, p in enumerate(ring) if i == 0 or p != ring[i - 1]]
    return ring if _area(ring) > 0 else ring[::-1]


def _close(ring: Ring) -> Ring:
    return ring if ring[0] == ring[-1] else ring + [ring[0]]


def _bbox_of(parts: list[Ring]) -> list[float]:
    """[w, s, e, n]; west > east when the parts straddle the antimeridian (largest lon gap excluded)."""
    south = min(y for p in parts for _, y in p)
    north = max(y for p in parts for _, y in p)
    spans = sorted((min(x for x, _ in p), max(x for x, _ in p)) for p in parts)
    merged: list[list[float]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    gaps = [(merged[i][1], merged[i + 1][0]) for i in range(len(merged) - 1)]
    wrap_gap = merged[0][0] + 360.0 - merged[-1][1]
    inner = max(gaps, key=lambda g: g[1] - g[0], default=None)
    if inner is not None and inner[1] - inner[0] > wrap_gap:
        return [inner[1], south, inner[0], north]
    return [merged[0][0], south, merged[-1][1], north]

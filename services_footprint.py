"""Footprints in EPSG:4326 for STAC, from what is on the Earth. Pure.

The outline of the pixel grid is densified and reprojected; when all of it transforms (almost every
raster) that is the footprint. When some of it does not (a geostationary full disk whose corners are
space, an orthographic hemisphere, a global grid whose corners lie outside its projection's domain) the
footprint is built from the pixels that do: a grid of ``GRID`` x ``GRID`` sample points, their convex
hull in pixel space, each hull vertex pushed outward by bisection to the edge of what transforms, the
hull's edges densified. Either ring is then unwrapped in longitude (closed over a pole it goes around),
split at the antimeridian (a MultiPolygon; bbox west > east) and kept within [-180, 180] x [-90, 90].
Only a raster with no transformable sample fails (``OffGlobeError``, ``off_globe``).

The outline is transformed by GDAL (as before); the sample grid by pyproj (rio-cogeo's dependencies
already bring it), which reports a point it cannot transform as ``inf`` instead of failing the batch.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points

from errors import OffGlobeError
from services_gdal import RASTER_ERRORS

DENSIFY_POINTS = 21
GRID = 64  # sample points per side when the outline does not transform
BISECTIONS = 14
Ring = list[tuple[float, float]]


def footprint_wgs84(info: Any, densify: int = DENSIFY_POINTS) -> tuple[dict[str, Any], list[float]]:
    """(GeoJSON geometry, bbox) of a ``RasterInfo``'s footprint in EPSG:4326."""
    return outline_wgs84(info.crs_wkt, Affine(*info.transform), info.width, info.height, info.path, densify)


def outline_wgs84(crs_wkt: str, transform: Affine, width: int, height: int, label: str,
                  densify: int = DENSIFY_POINTS) -> tuple[dict[str, Any], list[float]]:
    """(GeoJSON geometry, bbox) of the part of a ``width`` x ``height`` grid that lies on the Earth."""
    ring = edge_ring(crs_wkt, transform, width, height, densify)
    if ring is None:
        ring = _sampled_ring(_transformer(crs_wkt), transform, width, height, label, densify)
    return _geometry(ring)


def edge_ring(crs_wkt: str, transform: Affine, width: int, height: int,
              densify: int = DENSIFY_POINTS) -> Ring | None:
    """The densified pixel outline in lon/lat (GDAL's transformation, as ``transform_bounds`` uses), or
    None when some of it does not transform."""
    n = max(densify, 2)
    w, h = width, height
    pixels = ([(w * i / n, 0.0) for i in range(n)] + [(w, h * i / n) for i in range(n)]
              + [(w - w * i / n, h) for i in range(n)] + [(0.0, h - h * i / n) for i in range(n)])
    xs, ys = zip(*(transform @ p for p in pixels), strict=True)
    try:
        lons, lats = transform_points(CRS.from_wkt(crs_wkt), "EPSG:4326", list(xs), list(ys))
    except RASTER_ERRORS:
        return None
    if not all(math.isfinite(v) for v in (*lons, *lats)) or any(abs(lat) > 90.0 + 1e-9 for lat in lats):
        return None
    return list(zip(lons, lats, strict=True))


def _transformer(crs_wkt: str) -> Transformer:
    return Transformer.from_crs(ProjCRS.from_wkt(crs_wkt), ProjCRS.from_epsg(4326), always_xy=True)


def _lonlat(to_lonlat: Transformer, transform: Affine, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lon, lat and which points transformed, for (col, row) pixel coordinates."""
    a, b, c, d, e, f = tuple(transform)[:6]
    xs = a * pixels[:, 0] + b * pixels[:, 1] + c
    ys = d * pixels[:, 0] + e * pixels[:, 1] + f
    lons, lats = to_lonlat.transform(xs, ys, errcheck=False)
    lons, lats = np.asarray(lons, dtype="float64"), np.asarray(lats, dtype="float64")
    ok = np.isfinite(lons) & np.isfinite(lats) & (np.abs(lats) <= 90.0 + 1e-9)
    return lons, lats, ok


def _sampled_ring(to_lonlat: Transformer, transform: Affine, width: int, height: int, label: str,
                  densify: int) -> Ring:
    """The outline of the transformable part of the grid, from a sample of pixel positions."""
    nx, ny = min(GRID, max(width, 1)) + 1, min(GRID, max(height, 1)) + 1
    cols, rows = np.meshgrid(np.linspace(0, width, nx), np.linspace(0, height, ny))
    pixels = np.column_stack([cols.ravel(), rows.ravel()])
    _, _, ok = _lonlat(to_lonlat, transform, pixels)
    valid = pixels[ok]
    if not len(valid):
        raise OffGlobeError(f"off_globe: {label}: no pixel of the raster lies on the Earth (none of "
                            f"{len(pixels)} sample points transforms to longitude/latitude): check its CRS "
                            f"and geotransform")
    hull = _convex_hull(valid)
    densified = []
    per_edge = max(2, densify // 4)
    for i, start in enumerate(hull):
        end = hull[(i + 1) % len(hull)]
        densified += [start + (end - start) * k / per_edge for k in range(per_edge)]
    step = max(width / (nx - 1), height / (ny - 1))
    points = _push_out(to_lonlat, transform, np.array(densified), valid.mean(axis=0), step, width, height)
    lons, lats, ok = _lonlat(to_lonlat, transform, points)
    ring = [(x, y) for x, y, good in zip(lons.tolist(), lats.tolist(), ok.tolist(), strict=True) if good]
    if len(ring) < 3:  # a sliver: a small box around what transformed
        x, y = ring[0] if ring else (float(lons[ok][0]), float(lats[ok][0]))
        ring = [(x - 1e-6, y - 1e-6), (x + 1e-6, y - 1e-6), (x + 1e-6, y + 1e-6), (x - 1e-6, y + 1e-6)]
    return ring


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain, counter-clockwise, without repeated points."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) <= 2:
        return np.array(pts, dtype="float64")

    def cross(o: tuple[float, ...], a: tuple[float, ...], b: tuple[float, ...]) -> float:
        return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))

    lower: list[tuple[float, ...]] = []
    upper: list[tuple[float, ...]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], dtype="float64")


def _push_out(to_lonlat: Transformer, transform: Affine, hull: np.ndarray, centre: np.ndarray, step: float,
              width: int, height: int) -> np.ndarray:
    """Move each point of the hull away from ``centre`` (by up to three sample steps, inside the grid) as far
    as points still transform: the sample grid's outline becomes the edge of the Earth's disk."""
    direction = hull - centre
    norms = np.linalg.norm(direction, axis=1, keepdims=True)
    direction = np.divide(direction, norms, out=np.zeros_like(direction), where=norms > 0)
    good = np.zeros(len(hull))
    bad = np.full(len(hull), step * 3.0)
    for _ in range(BISECTIONS):
        mid = (good + bad) / 2
        trial = hull + direction * mid[:, None]
        inside = ((trial[:, 0] >= 0) & (trial[:, 0] <= width) & (trial[:, 1] >= 0) & (trial[:, 1] <= height))
        _, _, ok = _lonlat(to_lonlat, transform, trial)
        ok &= inside
        good = np.where(ok, mid, good)
        bad = np.where(ok, bad, mid)
    pushed: np.ndarray = hull + direction * good[:, None]
    return pushed


def _geometry(ring: Ring) -> tuple[dict[str, Any], list[float]]:
    ring = [(x, max(-90.0, min(90.0, y))) for x, y in ring]
    ring = _unwrap(ring)
    parts = [p for shift in (-720, -360, 0, 360, 720)
             if len(p := _clip_lon([(x + shift, y) for x, y in ring])) >= 3 and abs(_area(p)) > 1e-12]
    if not parts:  # a degenerate outline (a line or a point): its box
        xs, ys = [x for x, _ in ring], [y for _, y in ring]
        west, east = max(-180.0, min(xs) - 1e-6), min(180.0, max(xs) + 1e-6)
        south, north = max(-90.0, min(ys) - 1e-6), min(90.0, max(ys) + 1e-6)
        parts = [[(west, south), (east, south), (east, north), (west, north)]]
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
    bounds: tuple[tuple[float, Callable[[float], bool]], ...] = (
        (-180.0, lambda x: x >= -180.0), (180.0, lambda x: x <= 180.0))
    for edge, inside in bounds:
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


def bounds_finite(bounds: tuple[float, ...]) -> bool:
    """All four numbers finite and latitudes within [-90, 90]."""
    return all(math.isfinite(v) for v in bounds) and -90.0 <= bounds[1] <= bounds[3] <= 90.0

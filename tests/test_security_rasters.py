"""Hostile rasters and parameters (issue #8, items 1-3): no local file read, no request to any address
but the blob's own, no CRS fetched, no raster too large to handle.

A loopback HTTP listener (its own small process) counts every request that reaches it; hostile files point at it
or at a temporary file holding a known secret. Limits are shown with tiny files that declare huge
rasters or huge blocks, with the peak RSS of the call sampled by psutil.
"""
from __future__ import annotations

import json
import math
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import psutil
import pytest
import rasterio
from support import fresh_settings, run_job
from conftest_geo import (
    CUSTOM_LAEA_WKT, SECRET, no_secret_in, raw_vrt, remote_vrt, secret_file, smooth_image, write_raster,
)
from pydantic import ValidationError

import api_jobs
from errors import NotFoundError, ParameterValidationError, TaskError, TooLargeError, http_status_for
from repositories import Repositories
from services_cog import create_cog
from services_cog_options import CogOptions
from services_crs import user_crs
from services_gdal import RasterLimits, open_user_raster
from services_raster import validate_raster
from services_tiles import TileWindow, assemble_tiles, plan_tiles, process_tile
from task_manager import Engine

MIB = 1024 * 1024


# ------------------------------------------------------------------------------------ the listener


@pytest.fixture
def listener(loopback):
    """A loopback listener (conftest's ``loopback``), stopped (by its pid) after the test."""
    return loopback


# ------------------------------------------------------------------------------------ hostile files


def sparse_tiff(width: int, height: int, tile: int, *, bigtiff: bool = False) -> bytes:
    """A georeferenced (EPSG:4326) tiled uint8 (Big)TIFF, written by hand, whose tiles are all sparse
    (offset 0, size 0): a few hundred bytes plus 4 (8 for BigTIFF) bytes x 2 per declared tile."""
    short, long_, double, long8 = 3, 4, 12, 16
    n = math.ceil(width / tile) * math.ceil(height / tile)
    offset_type = long8 if bigtiff else long_
    tags = [(256, long_, [width]), (257, long_, [height]), (258, short, [8]), (259, short, [1]),
            (262, short, [1]), (277, short, [1]), (284, short, [1]), (322, long_, [tile]), (323, long_, [tile]),
            (324, offset_type, [0] * n), (325, offset_type, [0] * n), (339, short, [1]),
            (33550, double, [1e-4, 1e-4, 0.0]), (33922, double, [0, 0, 0, -60.0, 60.0, 0]),
            (34735, short, [1, 1, 0, 3, 1024, 0, 1, 2, 1025, 0, 1, 1, 2048, 0, 1, 4326])]
    word, entry, inline = ("Q", 20, 8) if bigtiff else ("I", 12, 4)
    header = b"II+\0" + struct.pack("<HHQ", 8, 0, 16) if bigtiff else b"II*\0" + struct.pack("<I", 8)
    data_at = len(header) + (8 if bigtiff else 2) + entry * len(tags) + inline
    entries, data = b"", b""
    for tag, kind, values in tags:
        payload = struct.pack("<" + {short: "H", long_: "I", double: "d", long8: "Q"}[kind] * len(values), *values)
        if len(payload) <= inline:
            field = payload.ljust(inline, b"\0")
        else:
            field = struct.pack("<" + word, data_at + len(data))
            data += payload
        entries += struct.pack("<HH" + word, tag, kind, len(values)) + field
    count = struct.pack("<Q", len(tags)) if bigtiff else struct.pack("<H", len(tags))
    return header + count + entries + b"\0" * inline + data


@contextmanager
def peak_rss_delta() -> Iterator[dict]:
    """Samples this process's RSS every 2 ms; ``['mib']`` is the peak above the start, in MiB."""
    process = psutil.Process()
    base = process.memory_info().rss
    out = {"peak": base}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            out["peak"] = max(out["peak"], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        stop.set()
        sampler.join()
        out["mib"] = (out["peak"] - base) / MIB


# ------------------------------------------------------------------------------- formats (service)
def test_vrt_disguised_as_tif_reading_a_local_file_is_refused(tmp_path):
    scene = tmp_path / "scene.tif"
    scene.write_text(raw_vrt(str(secret_file(tmp_path))))
    with rasterio.open(scene) as src:  # what GDAL does when any driver is allowed: reads the secret
        assert SECRET.encode()[:20] in src.read(1).tobytes()
    for attempt in (lambda: validate_raster(scene), lambda: create_cog(scene, tmp_path / "out.tif"),
                    lambda: process_tile(scene, TileWindow(index=0, col_off=0, row_off=0, width=8, height=4),
                                         tmp_path / "tile.tif")):
        with pytest.raises(TaskError, match=r"^not a raster: .*scene\.tif: only GeoTIFF/COG files are accepted "
                                            r"and this is VRT XML") as err:
            attempt()
        assert no_secret_in(err.value.message)
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "tile.tif").exists()


def test_vrt_pointing_at_a_loopback_listener_is_refused_without_a_request(tmp_path, listener):
    scene = tmp_path / "scene.tif"
    scene.write_text(remote_vrt(f"{listener.url}/leak.tif"))
    with pytest.raises(TaskError, match=r"^not a raster: .*VRT XML"):
        validate_raster(scene)
    with pytest.raises(TaskError, match=r"^not a raster: "):
        create_cog(scene, tmp_path / "out.tif")
    assert listener.hits == []


def test_a_dot_vrt_is_refused_even_when_it_only_wraps_a_good_geotiff(tmp_path):
    good = write_raster(tmp_path / "good.tif", smooth_image(1, 64, 64))
    mosaic = tmp_path / "mosaic.vrt"
    mosaic.write_text(f'<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="Byte" band="1">'
                      f"<SimpleSource><SourceFilename>{good}</SourceFilename><SourceBand>1</SourceBand>"
                      f"</SimpleSource></VRTRasterBand></VRTDataset>")
    with pytest.raises(TaskError, match=r"^not a raster: .*mosaic\.vrt: .*VRT XML"):
        validate_raster(mosaic)
    assert validate_raster(good).driver == "GTiff"


@pytest.mark.parametrize("target", ["local", "loopback"])
def test_an_aux_xml_that_redirects_the_overviews_is_not_honoured(tmp_path, listener, target):
    data = smooth_image(1, 600, 600)
    scene = write_raster(tmp_path / "scene.tif", data, tiled=True, blockxsize=256, blockysize=256)
    if target == "local":
        hostile = tmp_path / "ovr.vrt"
        hostile.write_text(raw_vrt(str(secret_file(tmp_path)), width=300).replace('rasterYSize="4"',
                                                                                   'rasterYSize="300"'))
        source = str(hostile)
    else:
        source = f"/vsicurl/{listener.url}/ovr.tif"
    (tmp_path / "scene.tif.aux.xml").write_text(
        f'<PAMDataset><Metadata domain="OVERVIEWS"><MDI key="OVERVIEW_FILE">{source}</MDI></Metadata></PAMDataset>')
    if target == "local":  # what GDAL does by default, even restricted to GTiff: the sidecar wins
        with rasterio.open(scene, driver="GTiff") as src:
            assert src.overviews(1) == [2]
    seen = len(listener.hits)
    info = validate_raster(scene)
    assert info.overviews == []
    with open_user_raster(scene) as src:
        assert src.files == [str(scene)]
    result = create_cog(scene, tmp_path / "out.tif")
    with rasterio.open(result.dst_path) as out:
        np.testing.assert_array_equal(out.read(1), data[0])
        for level in range(len(out.overviews(1))):
            with rasterio.open(result.dst_path, overview_level=level) as ovr:
                assert SECRET.encode()[:20] not in ovr.read().tobytes()
    assert listener.hits[seen:] == []


def test_remote_reads_reach_only_the_blob_url_and_only_as_a_geotiff(tmp_path, listener):
    url = f"{listener.url}/scene.tif"
    (listener.root / "scene.tif").write_text(remote_vrt(f"{listener.url}/inner.tif"))
    tile = TileWindow(index=0, col_off=0, row_off=0, width=8, height=4)
    other = f"{listener.url}/other.tif"
    refused = [dict(path=f"/vsicurl/{other}?sig=1", remote_url=url, head=b"II*\0"),  # not the allowed blob
               dict(path=f"/vsicurl/{url}?sig=1", remote_url=None, head=b"II*\0"),  # no URL allowed
               dict(path=f"/vsicurl/{url}?sig=1", remote_url=url, head=b"<VRTDataset"),  # wrong signature
               dict(path=f"/vsizip//vsicurl/{url}/x.tif", remote_url=url, head=b"II*\0")]
    for case in refused:
        with pytest.raises(TaskError, match=r"^not a raster: "):
            process_tile(case["path"], tile, tmp_path / "tile.tif", remote_url=case["remote_url"], head=case["head"])
    assert listener.hits == []
    # The blob changed into a VRT after its first bytes were checked: GDAL may still only read a GeoTIFF.
    with pytest.raises(TaskError, match=r"^corrupt raster: .*not recognized"):
        process_tile(f"/vsicurl/{url}?sig=1", tile, tmp_path / "tile.tif", remote_url=url, head=b"II*\0")
    assert listener.hits and {h.split("?")[0] for h in listener.hits} == {"/scene.tif"}


def test_the_apps_own_mosaic_is_the_only_vrt_opened(tmp_path):
    src = write_raster(tmp_path / "src.tif", smooth_image(1, 600, 700), tiled=True, blockxsize=512, blockysize=512)
    tiles = [process_tile(src, t, tmp_path / f"t{t.index}.tif").path for t in plan_tiles(src, 512)]
    assembled = assemble_tiles(tiles, tmp_path / "out.tif")
    assert assembled.width == 700 and validate_raster(assembled.dst_path).is_cog
    (tmp_path / "t0.tif").write_text(raw_vrt(str(secret_file(tmp_path))))  # a tampered tile
    with pytest.raises(TaskError, match=r"^not a raster: .*t0\.tif: .*VRT XML"):
        assemble_tiles(tiles, tmp_path / "again.tif")


# ------------------------------------------------------------------------------- formats (engine)


def blobs_in(engine: Engine, container: str) -> list[str]:
    try:
        return [b.name for b in engine.repos.rasters.list(container)]
    except NotFoundError:
        return []


@pytest.mark.parametrize("whole_read_bytes", [0, 4 * 1024 * 1024], ids=["by_ranges", "read_whole"])
@pytest.mark.parametrize("kind", ["local_file_as_tif", "loopback_as_tif", "dot_vrt"])
def test_hostile_vrt_blobs_fail_process_raster_end_to_end(geo_engine, tmp_path, listener, kind, whole_read_bytes):
    geo_engine.settings.whole_read_bytes = whole_read_bytes  # both ways a blob reaches GDAL
    content = {"local_file_as_tif": raw_vrt(str(secret_file(tmp_path))),
               "loopback_as_tif": remote_vrt(f"{listener.url}/leak.tif"),
               "dot_vrt": raw_vrt(str(secret_file(tmp_path)))}[kind]
    blob = f"hostile/{kind}." + ("vrt" if kind == "dot_vrt" else "tif")
    path = tmp_path / "upload"
    path.write_text(content)
    geo_engine.repos.rasters.upload(geo_engine.settings.input_container, blob, path, "image/tiff")
    status = run_job(geo_engine, "process_raster", {"blob": blob})
    assert status["status"] == "failed"
    expected = (f"not a raster: {geo_engine.settings.input_container}/{blob}: only GeoTIFF/COG files are "
                f"accepted and this is VRT XML")
    assert expected in status["error_details"], status["error_details"]
    assert status["stages"][0]["tasks"]["failed"] == 1 and status["stages"][0]["attempts"] == 1
    assert no_secret_in(json.dumps(status))
    assert blobs_in(geo_engine, geo_engine.settings.output_container) == []
    assert listener.hits == []


# ------------------------------------------------------------------------------------ CRS parameters
def test_crs_parameters_naming_a_path_or_url_are_400_and_never_fetched(engine, listener, tmp_path):
    secret = secret_file(tmp_path)
    hostile = [f"{listener.url}/crs", f"/vsicurl/{listener.url}/crs2", f"/vsicurl_streaming/{listener.url}/crs3",
               f"file://{secret}", str(secret), "+proj=longlat +datum=WGS84 +nadgrids=@/etc/passwd",
               f'GEOGCS["x",DATUM["d",SPHEROID["s",6378137,298.257]],PRIMEM["G",0],UNIT["degree",0.0174532925],'
               f'EXTENSION["PROJ4","+proj=longlat +nadgrids={listener.url}/grid.tif"]]']
    started = time.perf_counter()
    for job_type, extra in (("process_raster", {"blob": "a.tif"}), ("process_raster_batch", {"blobs": ["a.tif"]}),
                            ("process_large_raster", {"blob": "a.tif"})):
        for value in hostile:
            with pytest.raises(ParameterValidationError) as err:
                api_jobs.submit(engine, job_type, json.dumps({**extra, "target_crs": value}).encode(), "http://t")
            assert http_status_for(err.value) == 400
            assert [e["field"] for e in err.value.details["errors"]] == ["target_crs"], err.value.details
            assert no_secret_in(json.dumps(err.value.to_body()))
    for value in hostile:
        with pytest.raises(ValidationError):
            CogOptions(target_crs=value)
    assert time.perf_counter() - started < 5  # no 10 s HTTP timeouts
    assert listener.hits == []


PROJJSON_4326 = json.dumps({
    "type": "GeographicCRS", "name": "WGS 84",
    "datum": {"type": "GeodeticReferenceFrame", "name": "World Geodetic System 1984",
              "ellipsoid": {"name": "WGS 84", "semi_major_axis": 6378137, "inverse_flattening": 298.257223563}},
    "coordinate_system": {"subtype": "ellipsoidal", "axis": [
        {"name": "Geodetic latitude", "abbreviation": "Lat", "direction": "north", "unit": "degree"},
        {"name": "Geodetic longitude", "abbreviation": "Lon", "direction": "east", "unit": "degree"}]},
    "id": {"authority": "EPSG", "code": 4326}})


@pytest.mark.parametrize(("value", "canonical"), [
    ("EPSG:4326", "EPSG:4326"), ("epsg:3857", "EPSG:3857"), ("OGC:CRS84", "OGC:CRS84"),
    ("ESRI:102100", "ESRI:102100"), (PROJJSON_4326, "EPSG:4326"), (CUSTOM_LAEA_WKT, None)])
def test_authority_codes_wkt_and_projjson_are_accepted(engine, value, canonical):
    params = engine.controller("process_raster").validate({"blob": "a.tif", "target_crs": value}, engine.settings)
    if canonical:
        assert params.target_crs == canonical
    else:
        assert params.target_crs.startswith("PROJCRS[") and user_crs(params.target_crs).is_projected


# ----------------------------------------------------------------------------------------- limits
def test_a_sparse_bigtiff_declaring_a_trillion_pixels_is_refused_from_its_header(tmp_path):
    huge = tmp_path / "huge.tif"
    huge.write_bytes(sparse_tiff(1_000_000, 1_000_000, 8192, bigtiff=True))
    assert huge.stat().st_size < 300_000 and huge.read_bytes()[:4] == b"II+\0"
    with rasterio.open(huge) as src:  # GDAL opens it happily
        assert (src.width, src.height) == (1_000_000, 1_000_000)
    started = time.perf_counter()
    with peak_rss_delta() as rss, pytest.raises(TooLargeError) as err:
        validate_raster(huge)
    assert time.perf_counter() - started < 2 and rss["mib"] < 200, rss
    assert err.value.code == "too_large" and isinstance(err.value, TaskError)
    assert err.value.message.startswith("too_large: ") and "MAX_RASTER_PIXELS" in err.value.message
    with pytest.raises(TooLargeError, match="^too_large: .*1,000,000,000,000 pixels"):
        create_cog(huge, tmp_path / "out.tif")


def test_a_tiny_tiff_with_a_gigabyte_tile_is_refused_before_the_tile_is_read(tmp_path):
    bomb = tmp_path / "bomb.tif"
    bomb.write_bytes(sparse_tiff(32768, 32768, 32768))
    assert bomb.stat().st_size < 1000
    started = time.perf_counter()
    expected = r"^too_large: .*one block \(32,768 x 32,768 pixels\) is 1,073,741,824 bytes.*MAX_BLOCK_BYTES"
    with peak_rss_delta() as rss, pytest.raises(TooLargeError, match=expected):
        validate_raster(bomb)
    assert time.perf_counter() - started < 2 and rss["mib"] < 200, rss


def test_bands_and_tiles_over_their_limits_are_refused(tmp_path):
    src = write_raster(tmp_path / "four.tif", smooth_image(4, 600, 600))
    with pytest.raises(TooLargeError, match=r"^too_large: .*4 bands; the limit is 3 \(MAX_BANDS\)"):
        validate_raster(src, RasterLimits(max_bands=3))
    info = validate_raster(src)
    assert len(plan_tiles(info, 512, max_tiles=4)) == 4
    with pytest.raises(TooLargeError, match=r"^too_large: .*is 4 tiles; the limit is 3 \(MAX_TILES_PER_JOB\)"):
        plan_tiles(info, 512, max_tiles=3)


def test_process_large_raster_of_a_huge_sparse_file_stops_at_planning(geo_engine, tmp_path):
    huge = tmp_path / "huge.tif"
    huge.write_bytes(sparse_tiff(1_000_000, 1_000_000, 8192, bigtiff=True))
    geo_engine.repos.rasters.upload(geo_engine.settings.input_container, "huge/huge.tif", huge)
    status = run_job(geo_engine, "process_large_raster", {"blob": "huge/huge.tif"})
    assert status["status"] == "failed"
    assert f"too_large: {geo_engine.settings.input_container}/huge/huge.tif: 1,000,000 x 1,000,000" \
        in status["error_details"], status["error_details"]
    assert len(status["stages"]) == 1 or all(s["tasks"]["total"] == 0 for s in status["stages"][1:])


def test_the_engine_refuses_to_plan_a_stage_over_max_tasks_per_stage(azurite):
    engine = Engine(Repositories(fresh_settings(azurite.connection_string, max_tasks_per_stage=3)).ensure())
    status = run_job(engine, "hello_world", {"n": 5})
    assert status["status"] == "failed"
    assert ("too_large: stage 1 (hello_worlds) planned 5 tasks; the limit is 3 (MAX_TASKS_PER_STAGE)"
            in status["error_details"]), status["error_details"]
    assert run_job(engine, "hello_world", {"n": 3})["status"] == "completed"

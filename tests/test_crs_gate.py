"""Issue 20 case 10: a CRS that names a grid, an init file, a path or a URL is refused before PROJ parses it,
at every entry point: submit parameters, a watch's options, a schedule's parameters (400 naming the field),
and a raster's ``.aux.xml`` ``<SRS>`` and ``.prj`` (ignored with a note, never an internal error).

"Never opened" is shown with a FIFO: the hostile CRS names it as its grid, and a small process of its own
counts every time something opens it for reading (a reader blocks in ``open`` until a writer comes, so no
open can slip by). "Never fetched" is shown in a process started with PROJ's network access on
(``PROJ_NETWORK=ON``, its endpoint a loopback listener that counts requests): PROJ reads that setting
once per context, so it has to be set before the process parses any CRS.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest
from support import fresh_settings
from conftest_geo import smooth_image, write_raster
from rasterio.crs import CRS
from rasterio.transform import from_origin

import function_app
from queue_driver import QueueDriver
from repositories import Repositories
from task_manager import Engine

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------ who opens the FIFO
OPENER_WATCH = r"""
import errno, os, sys, time
path, log = sys.argv[1], open(sys.argv[2], "a", buffering=1)
print("ready", flush=True)
while True:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader has it open
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        time.sleep(0.002)
        continue
    log.write("opened\n")
    os.close(fd)  # the reader sees an empty file and goes on
    time.sleep(0.01)
"""


class FifoWatch:
    """A FIFO at ``path``; ``opens`` counts the times a process opened it to read."""

    def __init__(self, folder: Path) -> None:
        self.path, self.log = folder / "grid.gsb", folder / "opens.log"
        os.mkfifo(self.path)
        self.log.touch()
        self.proc = subprocess.Popen([sys.executable, "-c", OPENER_WATCH, str(self.path), str(self.log)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def opens(self) -> int:
        time.sleep(0.05)
        return len(self.log.read_text().splitlines())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def fifo(tmp_path) -> Iterator[FifoWatch]:
    watch = FifoWatch(tmp_path)
    try:
        yield watch
    finally:
        watch.stop()


# ------------------------------------------------------------------------------------ hostile CRSs
GEOG2 = ('GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563]],'
         'CS[ellipsoidal,2],AXIS["latitude",north,ANGLEUNIT["degree",0.0174532925199433]],'
         'AXIS["longitude",east,ANGLEUNIT["degree",0.0174532925199433]]]')
GEOG_JSON = {"type": "GeographicCRS", "name": "WGS 84",
             "datum": {"type": "GeodeticReferenceFrame", "name": "World Geodetic System 1984",
                       "ellipsoid": {"name": "WGS 84", "semi_major_axis": 6378137,
                                     "inverse_flattening": 298.257223563}},
             "coordinate_system": {"subtype": "ellipsoidal", "axis": [
                 {"name": "Latitude", "abbreviation": "lat", "direction": "north", "unit": "degree"},
                 {"name": "Longitude", "abbreviation": "lon", "direction": "east", "unit": "degree"}]}}


def hostile(grid: str) -> dict[str, str]:
    """CRS texts that name ``grid`` (a path or a URL) in every way we know PROJ or GDAL would follow."""
    return {
        # the object: 'type' makes it look like PROJJSON, from_dict makes it a PROJ string
        "json_with_type_and_nadgrids": json.dumps({"type": "x", "proj": "longlat", "ellps": "WGS84",
                                                   "nadgrids": grid}),
        "json_geoidgrids": json.dumps({"type": "GeographicCRS", "proj": "longlat", "ellps": "WGS84",
                                       "geoidgrids": grid}),
        "json_init": json.dumps({"type": "x", "init": f"{grid}:1"}),
        "projjson_bound_crs_grid_file": json.dumps({
            "type": "BoundCRS", "source_crs": GEOG_JSON, "target_crs": GEOG_JSON,
            "transformation": {"name": "t", "method": {"name": "NTv2", "id": {"authority": "EPSG", "code": 9615}},
                               "parameters": [{"name": "Latitude and longitude difference file", "value": grid}]}}),
        "wkt1_extension_in_parentheses": (
            f'GEOGCS("x",DATUM("d",SPHEROID("s",6378137,298.257),EXTENSION ("PROJ4_GRIDS","{grid}")),'
            f'PRIMEM("G",0),UNIT("degree",0.0174532925))'),
        "wkt1_extension_after_a_newline": (
            f'GEOGCS["x",DATUM["d",SPHEROID["s",6378137,298.257],extension\n\t["PROJ4_GRIDS","{grid}"]],'
            f'PRIMEM["G",0],UNIT["degree",0.0174532925]]'),
        "wkt2_parameterfile": (
            f'BOUNDCRS[SOURCECRS[{GEOG2}],TARGETCRS[{GEOG2}],ABRIDGEDTRANSFORMATION["t",METHOD["NTv2",'
            f'ID["EPSG",9615]],PARAMETERFILE["Latitude and longitude difference file","{grid}"]]]'),
        "wkt2_proj_based_method": (
            f'PROJCRS["x",BASEGEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,'
            f'298.257223563]]],CONVERSION["c",METHOD["PROJ-based operation method: +proj=pipeline +step '
            f'+proj=hgridshift +grids={grid} +step +proj=merc"]],CS[Cartesian,2],AXIS["e",east,'
            f'LENGTHUNIT["metre",1]],AXIS["n",north,LENGTHUNIT["metre",1]]]'),
    }


# ------------------------------------------------------------------------------------ the HTTP functions
def call(fn, route: str, body: dict, method: str = "POST", route_params: dict | None = None) -> tuple[int, dict]:
    req = func.HttpRequest(method, f"http://localhost/api/{route}", route_params=route_params or {},
                           body=json.dumps(body).encode())
    response = fn(req)
    return response.status_code, json.loads(response.get_body())


def entry_points(value: str, container: str) -> dict[str, tuple]:
    """Each way a CRS parameter reaches the app over HTTP: (function, route, body, route_params, field)."""
    return {
        "submit": (function_app.submit_job, "jobs/submit/process_raster", {"blob": "a.tif", "target_crs": value},
                   {"job_type": "process_raster"}, "target_crs"),
        "watch_options": (function_app.create_watch, "watches",
                          {"container": container, "prefix": "in/", "job_type": "process_raster",
                           "options": {"target_crs": value}}, None, "options.target_crs"),
        "schedule_parameters": (function_app.create_schedule, "schedules",
                                {"job_type": "process_raster", "expression": "0 0 * * * *",
                                 "parameters": {"blob": "a.tif", "target_crs": value}}, None, "target_crs"),
    }


@pytest.mark.parametrize("kind", list(hostile("g")))
def test_a_crs_naming_a_grid_is_400_at_every_entry_point_and_never_opened(http_engine, fifo, kind):
    value = hostile(str(fifo.path))[kind]
    for name, (fn, route, body, params, field) in entry_points(value, http_engine.settings.input_container).items():
        code, answer = call(fn, route, body, route_params=params)
        assert code == 400, (name, code, answer)
        assert field in [e["field"] for e in answer["errors"]], (name, answer)
    assert fifo.opens == 0, "PROJ opened the grid the CRS named"


def test_projjson_and_plain_crs_forms_are_still_accepted_over_http(http_engine):
    projjson = json.dumps({"$schema": "https://proj.org/schemas/v0.7/projjson.schema.json", **GEOG_JSON,
                           "id": {"authority": "EPSG", "code": 4326}})
    towgs84 = CRS.from_proj4("+proj=longlat +ellps=intl +towgs84=-87,-98,-121 +no_defs").to_wkt()
    for value in ("EPSG:3857", projjson, CRS.from_epsg(32633).to_wkt(), towgs84,
                  CRS.from_epsg(2154).to_wkt(version="WKT2_2019"), CRS.from_epsg(3035).to_dict(projjson=True)):
        text = value if isinstance(value, str) else json.dumps(value)
        code, answer = call(function_app.submit_job, "jobs/submit/process_raster",
                            {"blob": f"{uuid.uuid4().hex}.tif", "target_crs": text},
                            route_params={"job_type": "process_raster"})
        assert code == 202, (text[:80], answer)


# ------------------------------------------------------------------------------------ sidecars, as a task reads them
@pytest.fixture
def raster_engine(azurite, tmp_path) -> Engine:
    settings = fresh_settings(azurite.connection_string, retry_base_delay_s=0, sweeper_grace_s=0,
                              input_container=f"in-{uuid.uuid4().hex[:8]}",
                              output_container=f"out-{uuid.uuid4().hex[:8]}", work_dir=str(tmp_path / "work"))
    engine = Engine(Repositories(settings).ensure())
    engine.repos.rasters.ensure_container(settings.input_container)
    return engine


def scene(folder: Path, name: str, georeferenced: bool) -> Path:
    data = smooth_image(1, 64, 64)
    if georeferenced:
        return write_raster(folder / name, data, crs="EPSG:32633", transform=from_origin(400_000, 5_000_000, 20, 20))
    return write_raster(folder / name, data, crs=None, transform=False)


def upload_text(engine: Engine, folder: Path, blob: str, text: str) -> None:
    path = folder / uuid.uuid4().hex
    path.write_text(text)
    engine.repos.rasters.upload(engine.settings.input_container, blob, path)


def run_validate(engine: Engine, blob: str) -> dict:
    function_app._engine = engine
    code, body = call(function_app.submit_job, "jobs/submit/validate_raster", {"blob": blob},
                      route_params={"job_type": "validate_raster"})
    assert code == 202, body
    QueueDriver(engine).run(body["job_id"], timeout=120)
    code, status = call(function_app.job_status, f"jobs/status/{body['job_id']}", {}, method="GET",
                        route_params={"job_id": body["job_id"]})
    assert code == 200
    return status


AUX = '<PAMDataset><SRS>{srs}</SRS><Metadata><MDI key="SOURCE">scanner</MDI></Metadata></PAMDataset>'


@pytest.mark.parametrize("kind", ["json_with_type_and_nadgrids", "json_init", "projjson_bound_crs_grid_file",
                                  "wkt1_extension_in_parentheses", "wkt2_parameterfile"])
def test_an_aux_xml_srs_naming_a_grid_is_ignored_with_a_note(raster_engine, tmp_path, fifo, kind):
    from xml.sax.saxutils import escape

    engine = raster_engine
    engine.repos.rasters.upload(engine.settings.input_container, "aux/scene.tif", scene(tmp_path, "s.tif", True))
    upload_text(engine, tmp_path, "aux/scene.tif.aux.xml", AUX.format(srs=escape(hostile(str(fifo.path))[kind])))
    status = run_validate(engine, "aux/scene.tif")
    assert status["status"] == "completed", status.get("error_details")
    info = status["result_data"]["raster"]
    assert info["epsg"] == 32633  # the file's own CRS: the sidecar's was not applied
    assert any("ignored the <SRS> of" in w and "aux/scene.tif.aux.xml" in w for w in info["warnings"]), info
    assert fifo.opens == 0, "PROJ opened the grid the sidecar named"


@pytest.mark.parametrize("kind", ["wkt1_extension_in_parentheses", "wkt1_extension_after_a_newline",
                                  "wkt2_parameterfile"])
def test_a_prj_naming_a_grid_is_ignored_with_a_note_never_an_internal_error(raster_engine, tmp_path, fifo, kind):
    engine = raster_engine
    engine.repos.rasters.upload(engine.settings.input_container, "prj/scene.tif", scene(tmp_path, "s.tif", False))
    upload_text(engine, tmp_path, "prj/scene.tfw", "20\n0\n0\n-20\n400010\n4999990\n")
    upload_text(engine, tmp_path, "prj/scene.prj", hostile(str(fifo.path))[kind])
    status = run_validate(engine, "prj/scene.tif")
    assert status["status"] == "failed"
    assert "no coordinate reference system" in status["error_details"], status["error_details"]
    assert "; ignored " in status["error_details"] and "scene.prj" in status["error_details"]
    assert "internal" not in status["error_details"]
    assert fifo.opens == 0, "PROJ opened the grid the .prj named"


ENGINEERING = ('ENGCRS["site grid",EDATUM["site"],CS[Cartesian,2],AXIS["x",east,LENGTHUNIT["metre",1]],'
               'AXIS["y",north,LENGTHUNIT["metre",1]]]')


def test_an_aux_xml_crs_that_cannot_be_applied_is_ignored_with_a_note(raster_engine, tmp_path):
    """A CRS that parses but has no way to longitude/latitude failed the task as internal_error (ProjError)."""
    engine = raster_engine
    engine.repos.rasters.upload(engine.settings.input_container, "eng/scene.tif", scene(tmp_path, "s.tif", True))
    upload_text(engine, tmp_path, "eng/scene.tif.aux.xml", AUX.format(srs=ENGINEERING))
    status = run_validate(engine, "eng/scene.tif")
    assert status["status"] == "completed", status.get("error_details")
    info = status["result_data"]["raster"]
    assert info["epsg"] == 32633
    assert any("ignored the <SRS> of" in w and "longitude/latitude" in w for w in info["warnings"]), info


def test_gdals_own_web_mercator_wkt1_is_still_read_from_an_aux_xml(raster_engine, tmp_path):
    """GDAL writes EPSG:3857 as WKT1 with a PROJ4 EXTENSION (+nadgrids=@null, no file): read as EPSG:3857."""
    from xml.sax.saxutils import escape

    engine = raster_engine
    wkt1 = CRS.from_epsg(3857).to_wkt()
    assert "EXTENSION[\"PROJ4\"" in wkt1
    engine.repos.rasters.upload(engine.settings.input_container, "wm/scene.tif", scene(tmp_path, "s.tif", False))
    aux = AUX.format(srs=escape(wkt1)).replace("</SRS>", "</SRS><GeoTransform>0, 20, 0, 0, 0, -20</GeoTransform>")
    upload_text(engine, tmp_path, "wm/scene.tif.aux.xml", aux)
    status = run_validate(engine, "wm/scene.tif")
    assert status["status"] == "completed", status.get("error_details")
    assert status["result_data"]["raster"]["epsg"] == 3857
    code, answer = call(function_app.submit_job, "jobs/submit/process_raster", {"blob": "a.tif", "target_crs": wkt1},
                        route_params={"job_type": "process_raster"})
    assert code == 202, answer


# ------------------------------------------------------------------------------------ PROJ with network on
NETWORK_PROBE = r"""
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from rasterio.crs import CRS
from rasterio.warp import transform
from services_cog import create_cog
from services_cog_options import CogOptions
from services_raster import validate_raster
from services_source import Sidecars, TextSidecar
from xml.sax.saxutils import escape
values, raster, out = json.loads(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
AUX = '<PAMDataset><SRS>{}</SRS></PAMDataset>'
report = {}
for name, value in values.items():
    seen = []
    try:  # a parameter: refused at validation, or used as a task would use it
        options = CogOptions(target_crs=value)
        seen.append("parameter accepted")
        create_cog(raster, out / (name + ".tif"), options=options)
    except Exception as exc:
        seen.append(type(exc).__name__)
    try:  # a sidecar: ignored with a note, or applied and then used
        info = validate_raster(raster, sidecars=Sidecars(aux_xml=TextSidecar(name="s.aux.xml",
                                                                             content=AUX.format(escape(value)).encode())))
        seen.append("sidecar: " + " | ".join(info.warnings)[:200])
    except Exception as exc:
        seen.append(type(exc).__name__)
    report[name] = seen
print(json.dumps(report))
"""


def test_with_proj_network_on_no_hostile_crs_makes_a_request(tmp_path, loopback):
    listener = loopback
    values = hostile(f"{listener.url}/grid.tif")
    values.update({f"{k}_by_name": v for k, v in hostile("cdn_grid.tif").items()})  # fetched from the endpoint
    raster = scene(tmp_path, "s.tif", True)
    env = {**os.environ, "PROJ_NETWORK": "ON", "PROJ_NETWORK_ENDPOINT": listener.url,
           "PROJ_USER_WRITABLE_DIRECTORY": str(tmp_path / "proj"), "PROJ_CURL_CA_BUNDLE": "",
           "GDAL_HTTP_TIMEOUT": "5"}
    done = subprocess.run([sys.executable, "-c", NETWORK_PROBE, str(ROOT), json.dumps(values), str(raster),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert listener.hits == [], (listener.hits, report)
    for name, seen in report.items():
        assert "parameter accepted" not in seen, (name, seen)


def test_the_probe_does_reach_the_listener_when_proj_is_given_a_grid(tmp_path, loopback):
    listener = loopback
    """The network test above can fail: PROJ in that process does fetch a grid it is asked for."""
    script = (f"import sys; sys.path[:0] = [{str(ROOT)!r}]\n"
              "from rasterio.crs import CRS\nfrom rasterio.warp import transform\n"
              f"crs = CRS.from_proj4('+proj=longlat +ellps=WGS84 +nadgrids={listener.url}/probe.tif')\n"
              "try:\n    transform(crs, CRS.from_epsg(4326), [1.0], [1.0])\nexcept Exception:\n    pass\n")
    env = {**os.environ, "PROJ_NETWORK": "ON", "PROJ_USER_WRITABLE_DIRECTORY": str(tmp_path / "proj")}
    subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert any(hit.startswith("/probe.tif") for hit in listener.hits), listener.hits

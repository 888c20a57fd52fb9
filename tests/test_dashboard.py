"""The dashboard: the files it serves (content types, cache headers, no path out of its folder), the
catalogue items its map draws, and the page itself driven in headless Chromium against a local host
process over a private Azurite (and pgstac where PostGIS is installed)."""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

import pystac
import pytest
import requests
from conftest import fresh_settings, settings_env
from host_proc import HostProcess

import api_dashboard
import api_jobs
import services_stac
from repositories import Repositories

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
KEY = "dashboard-test-key-" + uuid.uuid4().hex[:8]
BROWSER_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1366,768", "--force-device-scale-factor=1"]


# ---------------------------------------------------------------- the files
def test_page_is_one_response_with_its_script_and_style_allowed_by_hash():
    asset = api_dashboard.serve("")
    html = asset.body.decode()
    assert asset.status == 200 and asset.content_type == "text/html; charset=utf-8"
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html  # behind a key, one request
    csp = asset.headers["Content-Security-Policy"]
    for name in ("common.js", "form.js", "map.js", "app.js", "app.css"):
        text = (ROOT / "dashboard" / name).read_text()
        assert text in html
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert "unsafe-inline" not in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert asset.headers["Referrer-Policy"] == "no-referrer" and asset.headers["X-Frame-Options"] == "DENY"
    assert asset.headers["Cache-Control"] == "no-cache" and asset.headers["ETag"]
    assert api_dashboard.serve("index.html").body == asset.body


@pytest.mark.parametrize("name, content_type", [
    ("app.js", "text/javascript; charset=utf-8"), ("map.js", "text/javascript; charset=utf-8"),
    ("app.css", "text/css; charset=utf-8"),
    ("land-110m.json", "application/json"), ("land-110m-LICENSE.txt", "text/plain; charset=utf-8"),
])
def test_files_have_their_content_type_cache_headers_and_etag(name, content_type):
    asset = api_dashboard.serve(name)
    assert asset.status == 200 and asset.content_type == content_type == asset.headers["Content-Type"]
    assert asset.body == (ROOT / "dashboard" / name).read_bytes()
    assert asset.headers["Cache-Control"] == "private, max-age=3600"
    assert asset.headers["X-Content-Type-Options"] == "nosniff"
    again = api_dashboard.serve(name, if_none_match=asset.headers["ETag"])
    assert again.status == 304 and again.body == b"" and again.headers["ETag"] == asset.headers["ETag"]
    assert api_dashboard.serve(name, if_none_match='"other"').status == 200


def test_the_world_outline_is_natural_earth_land_as_topojson():
    topology = json.loads((ROOT / "dashboard" / "land-110m.json").read_text())
    assert topology["type"] == "Topology" and "land" in topology["objects"]
    assert topology["bbox"][0] == -180 and topology["bbox"][2] == 180
    assert "Natural Earth" in (ROOT / "dashboard" / "land-110m-LICENSE.txt").read_text()


@pytest.mark.parametrize("name", [
    "../function_app.py", "..", "../../../../etc/passwd", "/etc/passwd", "..\\host.json", "%2e%2e%2fhost.json",
    "dashboard/app.js", "./app.js", "app.js/..", ".hidden.js", "app.js\x00.png", "index.htm", "app.py",
    "APP.JS", "app.js ", "x" * 5000,
])
def test_names_outside_the_folder_or_unknown_are_404(name):
    asset = api_dashboard.serve(name)
    assert asset.status == 404 and json.loads(asset.body)["error"] == "not_found"


def test_a_symlink_out_of_the_folder_is_not_followed(tmp_path, monkeypatch):
    folder = tmp_path / "dashboard"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (folder / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "ok.txt").write_text("fine")
    monkeypatch.setattr(api_dashboard, "DASHBOARD_DIR", folder.resolve())
    assert api_dashboard.serve("ok.txt").body == b"fine"
    assert api_dashboard.serve("leak.txt").status == 404


def test_the_deployment_ships_the_dashboard_folder():
    patterns = [line.strip().rstrip("/") for line in (ROOT / ".funcignore").read_text().splitlines()]
    hits = [p for p in patterns if p and not p.startswith("#")
            and any(fnmatch(path, p) for path in ("dashboard", "dashboard/app.js", "dashboard/land-110m.json"))]
    assert not hits, f".funcignore leaves the dashboard out of the deployment: {hits}"


# ---------------------------------------------------------------- the map's items
def test_catalog_items_without_a_catalogue_is_503_naming_the_setting(engine):
    code, body = api_jobs.respond(lambda: api_dashboard.catalog_items(engine))
    assert code == 503 and body["error"] == "not_configured" and "PGSTAC_HOST" in body["message"]


@pytest.mark.parametrize("collection, limit", [("../x", None), ("a b", None), ("c", "0"), ("c", "many")])
def test_catalog_items_bad_query_is_400(engine, collection, limit):
    code, body = api_jobs.respond(lambda: api_dashboard.catalog_items(engine, collection, limit))
    assert code == 400 and body["error"] == "bad_request", body


def seed_items(repo, prefix: str) -> dict[str, list[str]]:
    """Items with visible footprints in two collections: {collection: [item ids]}."""
    places = {f"{prefix}-alps": [(6.0, 45.0), (9.5, 46.5), (12.5, 47.0)],
              f"{prefix}-coast": [(-122.6, 37.2), (-74.3, 40.4), (-47.2, -23.9), (151.0, -34.0), (18.2, -34.2)]}
    seeded = {}
    for collection, corners in places.items():
        items = []
        for i, (west, south) in enumerate(corners):
            east, north = west + 2.5, south + 1.8
            ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
            items.append(pystac.Item(f"{collection}-{i}", {"type": "Polygon", "coordinates": [ring]},
                                     [west, south, east, north], datetime(2024, 5, i + 1, tzinfo=UTC), {},
                                     collection=collection))
        repo.ensure_collection(services_stac.build_collection(collection, items).to_dict(
            include_self_link=False, transform_hrefs=False))
        for item in items:
            repo.upsert_item(item.to_dict(include_self_link=False, transform_hrefs=False))
        seeded[collection] = [item.id for item in items]
    return seeded


def test_catalog_items_are_geojson_footprints_from_pgstac(geo_engine):
    seeded = seed_items(geo_engine.io.pgstac(), f"t{uuid.uuid4().hex[:6]}")
    alps, coast = seeded
    code, body = api_jobs.respond(lambda: api_dashboard.catalog_items(geo_engine, alps))
    assert code == 200 and body["type"] == "FeatureCollection" and body["collection"] == alps
    assert sorted(f["id"] for f in body["features"]) == sorted(seeded[alps])
    feature = body["features"][0]
    assert feature["type"] == "Feature" and feature["collection"] == alps and len(feature["bbox"]) == 4
    assert feature["geometry"]["type"] == "Polygon" and feature["properties"]["datetime"].startswith("2024-05-0")
    code, body = api_jobs.respond(lambda: api_dashboard.catalog_items(geo_engine, coast, "2"))
    assert code == 200 and len(body["features"]) == 2 and body["limit"] == 2
    code, body = api_jobs.respond(lambda: api_dashboard.catalog_items(geo_engine, None, "1000"))
    assert {f["id"] for f in body["features"]} >= set(seeded[alps]) | set(seeded[coast])


# ---------------------------------------------------------------- in a real browser
def browser_paths() -> tuple[str, str]:
    """Debian's chromium and chromium-driver; the test is skipped naming what is missing."""
    binary = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                               shutil.which("google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if Path(p).exists()), None)
    missing = [name for name, path in (("chromium", binary), ("chromium-driver (chromedriver)", driver)) if not path]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: ./dev.sh setup installs Debian's chromium and chromium-driver")
    return binary, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a fresh profile, its console and network logs kept."""
    binary, driver_path = browser_paths()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in BROWSER_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the viewport, not the window: 1366 x 768
                           {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def site(azurite, tmp_path_factory):
    """A local host over fresh tables and queues, with a catalogue where PostGIS is installed."""
    from conftest_geo import running_pgstac

    tmp = tmp_path_factory.mktemp("dashboard")
    settings = fresh_settings(azurite.connection_string, retry_base_delay_s=0)
    repos = Repositories(settings).ensure()
    env = settings_env(settings)
    with_catalogue = None
    try:
        catalogue = running_pgstac(tmp / "pgstac")
        server = catalogue.__enter__()
    except pytest.skip.Exception:  # no PostGIS: the map shows that no catalogue is configured
        catalogue = None
    if catalogue is not None:
        pg = server.settings
        env.update({"PGSTAC_HOST": pg.host, "PGSTAC_PORT": str(pg.port), "PGSTAC_DBNAME": pg.dbname,
                    "PGSTAC_USER": pg.user, "PGSTAC_PASSWORD": pg.password.get_secret_value()})
        from repository_pgstac import PgstacRepository

        with PgstacRepository(pg, services_stac) as repo:
            with_catalogue = seed_items(repo, "scenes")
    host = HostProcess(env, tmp / "host.log").start()
    try:
        yield host, repos, with_catalogue
    finally:
        host.stop()
        if catalogue is not None:
            catalogue.__exit__(None, None, None)


def submit(host: HostProcess, params: dict) -> str:
    r = requests.post(f"{host.url}/jobs/submit/hello_world", json=params, timeout=30)
    assert r.status_code in (200, 202), r.text
    return r.json()["job_id"]


def wait_for(condition, timeout: float = 30, every: float = 0.1, what: str = "condition"):
    """The first truthy value of ``condition()`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_status(host: HostProcess, job_id: str) -> str:
    return requests.get(f"{host.url}/jobs/status/{job_id}", timeout=10).json()["status"]


def test_the_dashboard_in_headless_chromium(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    host, repos, catalogued = site
    find = browser.find_element
    failing = submit(host, {"n": 3, "message": "dashboard retry", "fail_indices": [1]})
    submit(host, {"n": 5, "message": "dashboard done"})
    missing = requests.post(f"{host.url}/jobs/submit/validate_raster", json={"blob": "incoming/scene-042.tif"},
                            timeout=30)  # fails: no such blob
    assert missing.status_code == 202, missing.text
    submit(host, {"n": 8, "message": "dashboard more"})
    requests.post(f"{host.url}/schedules", json={"job_type": "hello_world", "parameters": {"n": 2},
                                                 "expression": "0 0 2 * * *", "name": "nightly hello"}, timeout=30)
    requests.post(f"{host.url}/watches", json={"container": "rasters", "prefix": "incoming/",
                                               "job_type": "process_raster", "name": "new scenes"}, timeout=30)
    wait_for(lambda: job_status(host, failing) == "failed", what="the job with fail_indices to fail")

    # the page, opened with a function key, loads without a console error
    running = submit(host, {"n": 40, "sleep_ms": 900, "message": "dashboard progress"})
    browser.get(f"{host.url}/dashboard/?code={KEY}")
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready === 'true'"), what="the page")
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []

    # a running job's progress bar moves; the screenshot is taken half way, with the job open
    find(By.CSS_SELECTOR, f"tr[data-job-id='{running}'] button.job-open").click()
    seen: list[float] = []
    shot: list[float] = []

    def progress_of_running() -> bool:
        value = float(find(By.CSS_SELECTOR, f"tr[data-job-id='{running}'] .bar").get_attribute("aria-valuenow") or 0)
        if not seen or seen[-1] != value:
            seen.append(value)
            if 20 <= value <= 80 and not shot:
                time.sleep(0.7)  # the bars' transition ends
                SCREENSHOT.parent.mkdir(exist_ok=True)
                browser.save_screenshot(str(SCREENSHOT))
                shot.append(value)
        return value == 100

    wait_for(progress_of_running, timeout=40, every=0.2, what=f"the running job's progress to reach 100: {seen}")
    assert len([v for v in seen if 0 < v < 100]) >= 2 and seen == sorted(seen), seen
    assert shot, f"no screenshot half way: progress went {seen}"
    wait_for(lambda: find(By.ID, "d-status").text == "completed", what="the running job to complete")

    # the open job: two stages as bars with timings, its 80 tasks paged
    assert len(browser.find_elements(By.CSS_SELECTOR, "#d-stages li")) == 2
    assert "40/40 ended" in find(By.ID, "d-stages").text
    assert re.search(r"\d+(\.\d+)? s", find(By.CSS_SELECTOR, "#d-stages .stage-time").text)
    assert "tasks 1–8" in find(By.ID, "tasks-page").text
    first_page = find(By.ID, "tasks-body").text
    find(By.ID, "tasks-next").click()
    wait_for(lambda: "tasks 9–16" in find(By.ID, "tasks-page").text, what="the second page of tasks")
    assert find(By.ID, "tasks-body").text != first_page and find(By.ID, "tasks-first").is_enabled()

    # a failed job: its error shows, its cause is fixed, Retry (by keyboard) runs it to completion
    find(By.CSS_SELECTOR, f"tr[data-job-id='{failing}'] button.job-open").click()
    wait_for(lambda: find(By.ID, "retry-button").is_enabled(), what="Retry to be enabled")
    assert "fail_indices" in find(By.ID, "d-errors").text and not find(By.ID, "cancel-button").is_enabled()
    task = repos.store.get_task(failing, 1, 1)
    repos.store.replace_task(task.model_copy(update={"parameters": {**task.parameters, "fail": False}}))
    find(By.ID, "retry-button").send_keys(Keys.ENTER)  # by keyboard
    wait_for(lambda: find(By.ID, "d-status").text == "completed", timeout=30, what="the retried job to complete")
    assert job_status(host, failing) == "completed"

    # the form: a 400 shows next to the field it names, then a valid job is submitted
    Select(find(By.ID, "job-type")).select_by_value("hello_world")
    n = find(By.ID, "f-n")
    assert find(By.CSS_SELECTOR, "label[for='f-n']").text.startswith("N")
    n.clear()
    n.send_keys("0")
    find(By.ID, "submit-button").click()
    wait_for(lambda: find(By.ID, "f-n-error").is_displayed(), what="the error next to n")
    assert "greater than or equal to 1" in find(By.ID, "f-n-error").text
    assert n.get_attribute("aria-invalid") == "true"
    n.clear()
    n.send_keys("2")
    message = find(By.ID, "f-message")
    message.clear()
    message.send_keys("from the form")
    find(By.ID, "submit-button").click()
    notice = wait_for(lambda: re.search(r"Submitted hello_world: new job ([0-9a-f]{10})", find(By.ID, "notice").text),
                      what="the submission notice")
    formed = wait_for(lambda: browser.execute_script(
        "return document.querySelector(\"tr[data-job-id^='\" + arguments[0] + \"']\")?.dataset.jobId", notice[1]),
        what="the submitted job in the list")
    wait_for(lambda: job_status(host, formed) == "completed", what="the job from the form to complete")
    params = requests.get(f"{host.url}/jobs/status/{formed}", timeout=10).json()["parameters"]
    assert params["n"] == 2 and params["message"] == "from the form"

    # a running job is cancelled by its button
    slow = submit(host, {"n": 30, "sleep_ms": 3000, "message": "dashboard cancel"})
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"tr[data-job-id='{slow}']"), what="the slow job")
    find(By.CSS_SELECTOR, f"tr[data-job-id='{slow}'] button.job-open").click()
    wait_for(lambda: find(By.ID, "cancel-button").is_enabled(), what="Cancel to be enabled")
    find(By.ID, "cancel-button").click()
    wait_for(lambda: find(By.ID, "d-status").text == "cancelled", what="the cancelled job")
    assert job_status(host, slow) == "cancelled"

    # schedules, watches and the map
    assert "nightly hello" in find(By.ID, "schedules-body").text
    assert "rasters/incoming/" in find(By.ID, "watches-body").text
    if catalogued:
        assert len(browser.find_elements(By.CSS_SELECTOR, "#footprints .footprint")) == 8
        assert "8 items in 2 collections" in find(By.ID, "items-note").text
    else:
        assert "No STAC catalogue is configured" in find(By.ID, "items-note").text
    assert find(By.CSS_SELECTOR, "#land path").get_attribute("d").count("M") > 50

    # no console error but the 400 the form was meant to get; the key went in a header, nowhere else
    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert [e["message"].split(" - ", 1)[1] for e in problems] == [
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"], problems
    events = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    sent = [m["params"]["request"] for m in events if m["method"] == "Network.requestWillBeSent"]
    api_calls = [r for r in sent if "/api/jobs" in r["url"]]
    assert api_calls and all(r["headers"].get("x-functions-key") == KEY for r in api_calls)
    assert [r["url"] for r in sent if KEY in r["url"]] == [f"{host.url}/dashboard/?code={KEY}"]
    assert KEY not in (host.log_path.read_text() + host.log_path.with_suffix(".out").read_text())


def test_dashboard_routes_over_http(site):
    host = site[0]
    page = requests.get(f"{host.url}/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
    etag = page.headers["ETag"]
    assert requests.get(f"{host.url}/dashboard/", headers={"If-None-Match": etag}, timeout=10).status_code == 304
    js = requests.get(f"{host.url}/dashboard/app.js", timeout=10)
    assert js.status_code == 200 and js.headers["Content-Type"] == "text/javascript; charset=utf-8"
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    for raw in ("/api/dashboard/..%2Ffunction_app.py", "/api/dashboard/..%2F..%2Fhost.json",
                "/api/dashboard/%2e%2e", "/api/dashboard/../function_app.py"):
        connection.request("GET", raw)
        answer = connection.getresponse()
        body = answer.read()
        assert answer.status == 404 and b"def " not in body and b"extensions" not in body, raw
    connection.close()
    r = requests.get(f"{host.url}/catalog/items?collection=../x", timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"

"""The pgstac repository against a real PostgreSQL + PostGIS + pgstac (tests/postgres_proc.py), and the
whole raster pipeline: validate -> COG -> STAC item -> offline validation -> upsert -> search."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest_geo import (
    REAL_RASTERS,
    SCHEMAS_DIR,
    needs_rasters,
    needs_schemas,
    running_pgstac,
    smooth_image,
    unique,
    write_raster,
)
from postgres_proc import free_port
from rasterio.transform import from_origin

from errors import NotFoundError, TaskError, TransientError
import services_stac
from repository_pgstac import PgstacRepository, PgstacSettings
from services_cog import create_cog
from services_stac import build_collection, build_item, validate_item_offline

WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def pgstac(tmp_path_factory):
    """One private server for this module, stopped by PID at the end even on failure."""
    with running_pgstac(tmp_path_factory.mktemp("pgstac")) as server:
        yield server


@pytest.fixture
def repo(pgstac):
    """A repository (its own small pool) over the module's server."""
    with PgstacRepository(pgstac.settings, services_stac) as repository:
        yield repository


def stored(item) -> dict:
    """An item or collection as it is stored."""
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def synthetic_item(tmp_path, collection_id, name, origin, when):
    """A small raster at ``origin`` (UTM 18N) -> its STAC item dict."""
    path = write_raster(tmp_path / f"{name}.tif", smooth_image(1, 64, 64), nodata=0,
                        transform=from_origin(*origin, 30, 30))
    return stored(build_item(path, container="rasters", blob=f"{name}.tif", href=f"https://x/{name}.tif",
                             datetime=when, collection_id=collection_id))


@needs_rasters
@needs_schemas
@pytest.mark.parametrize("path", REAL_RASTERS, ids=lambda p: p.name)
def test_every_real_raster_goes_from_file_to_search(repo, tmp_path, path):
    collection_id = unique("real")
    blob = f"incoming/{path.stem}_cog.tif"
    cog = create_cog(path, tmp_path / "cog.tif")
    item = build_item(cog.dst_path, container="cogs", blob=blob, href=f"https://acct.blob/cogs/{blob}",
                      last_modified=WHEN, collection_id=collection_id)
    data = stored(item)
    assert data["assets"]["data"]["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    validate_item_offline(data, SCHEMAS_DIR)
    assert repo.ensure_collection(stored(build_collection(collection_id, [item]))) == "created"
    assert repo.upsert_item(data) == "created"
    found = repo.search(bbox=data["bbox"], collections=[collection_id])
    assert [f["id"] for f in found] == [item.id]
    back = repo.get_item(collection_id, item.id)
    assert back["assets"]["data"]["file:checksum"] == data["assets"]["data"]["file:checksum"]
    assert back["properties"]["proj:shape"] == data["properties"]["proj:shape"]
    validate_item_offline(back, SCHEMAS_DIR)


def test_same_item_twice_is_one_row(repo, tmp_path):
    collection_id = unique("idem")
    item = synthetic_item(tmp_path, collection_id, "a", (500_000, 4_000_000), WHEN)
    repo.ensure_collection(stored(build_collection(collection_id, [item])))
    assert repo.upsert_item(item) == "created"
    item["properties"]["title"] = "second time"
    assert repo.upsert_item(item) == "updated"
    assert repo.count_items(collection_id) == 1
    assert repo.get_item(collection_id, item["id"])["properties"]["title"] == "second time"


def test_collection_extent_covers_every_item(repo, tmp_path):
    collection_id = unique("extent")
    first = synthetic_item(tmp_path, collection_id, "first", (500_000, 4_000_000), WHEN)
    later = WHEN + timedelta(days=30)
    second = synthetic_item(tmp_path, collection_id, "second", (700_000, 4_400_000), later)
    assert repo.ensure_collection(stored(build_collection(collection_id, [first]))) == "created"
    repo.upsert_item(first)
    repo.upsert_item(second)
    extent = repo.get_collection(collection_id)["extent"]
    west, south, east, north = extent["spatial"]["bbox"][0]
    for item in (first, second):
        w, s, e, n = item["bbox"]
        assert west <= w and south <= s and east >= e and north >= n
    assert extent["temporal"]["interval"][0] == ["2024-01-02T03:04:05Z", "2024-02-01T03:04:05Z"]
    # re-ensuring with a narrower extent (the first item only) never shrinks it
    assert repo.ensure_collection(stored(build_collection(collection_id, [first]))) == "unchanged"
    assert repo.get_collection(collection_id)["extent"] == extent
    assert sorted(f["id"] for f in repo.search(collections=[collection_id])) == sorted([first["id"],
                                                                                        second["id"]])
    assert [f["id"] for f in repo.search(bbox=second["bbox"], collections=[collection_id])] == [second["id"]]


def test_item_without_its_collection_is_not_found(repo, tmp_path):
    item = synthetic_item(tmp_path, unique("missing"), "orphan", (500_000, 4_000_000), WHEN)
    with pytest.raises(NotFoundError, match="does not exist in pgstac: ensure_collection first"):
        repo.upsert_item(item)
    with pytest.raises(TaskError, match="needs 'id' and 'collection'"):
        repo.upsert_item({"id": "x"})
    assert repo.get_item(item["collection"], item["id"]) is None
    assert repo.count_items(item["collection"]) == 0


def test_bad_item_is_a_task_error(repo, tmp_path):
    collection_id = unique("bad")
    item = synthetic_item(tmp_path, collection_id, "bad", (500_000, 4_000_000), WHEN)
    repo.ensure_collection(stored(build_collection(collection_id, [item])))
    item["properties"]["datetime"] = "not a date"
    with pytest.raises(TaskError, match="pgstac rejected the data"):
        repo.upsert_item(item)
    assert repo.count_items(collection_id) == 0


def test_bulk_load_with_pypgstac_loader(repo, tmp_path):
    collection_id = unique("bulk")
    items = [synthetic_item(tmp_path, collection_id, f"b{i}", (400_000 + 20_000 * i, 4_000_000),
                            WHEN + timedelta(hours=i)) for i in range(12)]
    repo.ensure_collection(stored(build_collection(collection_id, items[:1])))
    assert repo.bulk_load(items) == 12
    assert repo.count_items(collection_id) == 12
    assert repo.bulk_load(items) == 12  # upsert mode: loading again changes nothing
    assert repo.count_items(collection_id) == 12
    west, _, east, _ = repo.get_collection(collection_id)["extent"]["spatial"]["bbox"][0]
    assert west <= items[0]["bbox"][0] and east >= items[-1]["bbox"][2]
    assert repo.upsert_item(items[3]) == "updated"  # the single-item path sees the bulk rows


def test_connection_loss_is_transient_and_never_shows_the_password(pgstac):
    secret = pgstac.password
    down = PgstacSettings(host="127.0.0.1", port=free_port(), dbname="x", user="postgres", password=secret,
                          connect_timeout_s=2)
    with PgstacRepository(down, services_stac) as repository, pytest.raises(TransientError) as caught:
        repository.count_items("anything")
    assert secret not in str(caught.value)
    wrong = PgstacSettings(**{**pgstac.settings.model_dump(), "password": "wrong", "connect_timeout_s": 2})
    with PgstacRepository(wrong, services_stac) as repository, \
            pytest.raises(TransientError, match="pgstac unavailable"):
        repository.count_items("anything")


def test_settings_quote_and_hide_the_password(pgstac):
    settings = pgstac.settings
    assert "'" in pgstac.password and " " in pgstac.password  # the server's password needs quoting
    assert pgstac.password not in repr(settings) and pgstac.password not in settings.safe_dsn
    assert "password=***" in settings.safe_dsn and "search_path=pgstac,public" in settings.dsn


def test_parallel_writers_into_a_new_collection_lose_nothing(pgstac, tmp_path):
    """Like sync_container's catalog tasks: many processes' ensure_collection + upsert_item at once
    into a collection that does not exist yet (its partition is created by the first item)."""
    import threading

    from services_stac import build_collection

    for round_ in range(4):
        collection_id = unique(f"race{round_}")
        items = [synthetic_item(tmp_path, collection_id, f"r{round_}-{i}", (500_000 + 3000 * i, 4e6), WHEN)
                 for i in range(12)]
        errors, barrier = [], threading.Barrier(len(items))

        def write(item):
            with PgstacRepository(pgstac.settings, services_stac) as own:  # one pool per "worker process"
                try:
                    barrier.wait()
                    own.ensure_collection(stored(build_collection(collection_id, [item])))
                    own.upsert_item(item)
                except Exception as exc:  # surfaced below
                    errors.append(exc)

        threads = [threading.Thread(target=write, args=(item,)) for item in items]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with PgstacRepository(pgstac.settings, services_stac) as check:
            assert check.count_items(collection_id) == len(items)

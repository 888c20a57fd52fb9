"""build_item, item ids, footprints, collections/extents and offline schema validation."""
from __future__ import annotations

import hashlib
import socket
from datetime import UTC, datetime, timedelta

import numpy as np
import pystac
import pytest
from conftest_geo import (
    CUSTOM_LAEA_WKT,
    SCHEMAS_DIR,
    needs_schemas,
    smooth_image,
    write_raster,
)
from rasterio.transform import from_bounds, from_origin
from rasterio.warp import transform as transform_points

from errors import TaskError
from services_cog import create_cog
from services_raster import validate_raster
from services_stac import (
    build_collection,
    build_item,
    item_id,
    merge_extent,
    union_bbox,
    validate_item_offline,
)

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def make_item(path, blob="folder/scene.tif", **kwargs):
    """build_item with the blob facts filled in."""
    kwargs.setdefault("last_modified", WHEN)
    return build_item(path, container="rasters", blob=blob, href=f"https://acct.blob/rasters/{blob}",
                      **kwargs)


def as_dict(item: pystac.Item) -> dict:
    """How the item is stored (no self link, hrefs as given)."""
    return item.to_dict(include_self_link=False, transform_hrefs=False)


@pytest.fixture
def utm_raster(tmp_path):
    """A small uint8 raster with nodata and a TIFF datetime."""
    data = smooth_image(2, 300, 400)
    data[:, :10, :] = 0
    return write_raster(tmp_path / "utm.tif", data, nodata=0,
                        tags={"TIFFTAG_DATETIME": "2021:03:04 05:06:07"})


# ---------------------------------------------------------------------------------------------- ids
def test_item_ids_are_readable_deterministic_and_safe():
    assert item_id("rasters", "folder/sub/scene.tif") == "rasters--folder__sub__scene"
    assert item_id("rasters", "/scene.v2.tif") == "rasters--scene.v2"
    assert item_id("rasters", "scene") == "rasters--scene"
    # different containers never collide, though a single '-' would make these equal
    assert item_id("a-b", "c.tif") != item_id("a", "b-c.tif")
    # lossy forms get a hash of the original, so distinct blobs keep distinct ids
    spaced = item_id("rasters", "my scene (1).tif")
    assert spaced.startswith("rasters--my-scene--1-") and spaced != item_id("rasters", "my_scene__1_.tif")
    assert item_id("rasters", "a__b.tif") != item_id("rasters", "a/b.tif")
    long_id = item_id("rasters", "x" * 500 + ".tif")
    assert len(long_id) <= 200 and long_id == item_id("rasters", "x" * 500 + ".tif")
    for value in (spaced, long_id, item_id("rasters", "ünïcode/ø.tif")):
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in value)


# -------------------------------------------------------------------------------------------- items
def test_item_from_a_raster(utm_raster):
    item = make_item(utm_raster, collection_id="demo")
    data = as_dict(item)
    assert data["id"] == "rasters--folder__scene" and data["collection"] == "demo"
    props = data["properties"]
    assert props["proj:code"] == "EPSG:32618" and "proj:wkt2" not in props
    assert props["proj:shape"] == [300, 400]
    assert props["proj:transform"] == list(from_origin(500_000, 4_000_000, 30, 30))[:6]
    asset = data["assets"]["data"]
    assert asset["href"] == "https://acct.blob/rasters/folder/scene.tif"
    assert asset["type"] == pystac.MediaType.GEOTIFF and asset["roles"] == ["data"]
    assert asset["raster:bands"] == [{"data_type": "uint8", "nodata": 0, "spatial_resolution": 30.0}] * 2
    assert asset["file:size"] == utm_raster.stat().st_size
    assert asset["file:checksum"] == "1220" + hashlib.sha256(utm_raster.read_bytes()).hexdigest()
    west, south, east, north = data["bbox"]
    for lon, lat in data["geometry"]["coordinates"][0]:
        assert west <= lon <= east and south <= lat <= north
    assert data["geometry"]["coordinates"][0][0] == data["geometry"]["coordinates"][0][-1]


def test_cog_asset_media_type_and_given_checksum(utm_raster, tmp_path):
    cog = create_cog(utm_raster, tmp_path / "cog.tif").dst_path
    item = make_item(cog, sha256="ab" * 32, file_size=12345)
    asset = as_dict(item)["assets"]["data"]
    assert asset["type"] == pystac.MediaType.COG
    assert (asset["file:size"], asset["file:checksum"]) == (12345, "1220" + "ab" * 32)


def test_datetime_precedence(utm_raster, tmp_path):
    param = datetime(2020, 1, 1, tzinfo=UTC)
    tiff = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert make_item(utm_raster, datetime=param).datetime == param  # the parameter wins
    assert make_item(utm_raster).datetime == tiff  # then TIFFTAG_DATETIME (as UTC)
    assert make_item(utm_raster, file_datetime=param).datetime == param  # explicit file datetime
    plain = write_raster(tmp_path / "plain.tif", smooth_image(1, 20, 20))
    assert make_item(plain).datetime == WHEN  # then the blob's last-modified
    naive = datetime(2022, 2, 2, 2, 2, 2)
    assert make_item(plain, datetime=naive).datetime == naive.replace(tzinfo=UTC)
    with pytest.raises(TaskError, match="no datetime"):
        make_item(plain, last_modified=None)


def test_crs_without_epsg_uses_wkt2(tmp_path):
    path = write_raster(tmp_path / "laea.tif", smooth_image(1, 50, 60, dtype="float32"),
                        crs=CUSTOM_LAEA_WKT, transform=from_origin(990_000, 1_010_000, 100, 100),
                        nodata=float("nan"))
    props = as_dict(make_item(path))["properties"]
    assert props["proj:code"] is None and props["proj:wkt2"].startswith("PROJCRS[")
    bands = as_dict(make_item(path))["assets"]["data"]["raster:bands"]
    assert bands == [{"data_type": "float32", "nodata": "nan", "spatial_resolution": 100.0}]


def test_geographic_resolution_is_in_metres(tmp_path):
    path = write_raster(tmp_path / "geo.tif", smooth_image(1, 10, 10), crs="EPSG:4326",
                        transform=from_origin(10, 1, 0.001, 0.001))
    resolution = as_dict(make_item(path))["assets"]["data"]["raster:bands"][0]["spatial_resolution"]
    assert 110 < resolution < 112


def test_footprint_splits_at_the_antimeridian(tmp_path):
    xs, ys = transform_points("EPSG:4326", "EPSG:3832", [170, -170], [-20, -10])  # PDC Mercator
    path = write_raster(tmp_path / "am.tif", smooth_image(1, 50, 100), crs="EPSG:3832",
                        transform=from_bounds(xs[0], ys[0], xs[1], ys[1], 100, 50))
    data = as_dict(make_item(path))
    assert data["geometry"]["type"] == "MultiPolygon"
    spans = sorted((min(p[0] for p in poly[0]), max(p[0] for p in poly[0]))
                   for poly in data["geometry"]["coordinates"])
    assert spans == [(-180.0, pytest.approx(-170, abs=1e-6)), (pytest.approx(170, abs=1e-6), 180.0)]
    west, south, east, north = data["bbox"]
    assert west == pytest.approx(170, abs=1e-6) and east == pytest.approx(-170, abs=1e-6)
    assert (south, north) == (pytest.approx(-20, abs=1e-6), pytest.approx(-10, abs=1e-6))
    info = validate_raster(path)
    assert info.bounds_wgs84[0] > info.bounds_wgs84[2]


def test_footprint_over_the_pole(tmp_path):
    path = write_raster(tmp_path / "pole.tif", smooth_image(1, 100, 100), crs="EPSG:3413",
                        transform=from_bounds(-1e6, -1e6, 1e6, 1e6, 100, 100))
    data = as_dict(make_item(path))
    assert data["geometry"]["type"] == "Polygon"
    lats = [lat for _, lat in data["geometry"]["coordinates"][0]]
    assert max(lats) == 90.0
    assert data["bbox"][0] == -180.0 and data["bbox"][2] == 180.0 and data["bbox"][3] == 90.0


# --------------------------------------------------------------------------------------- validation
@needs_schemas
def test_items_validate_offline(utm_raster, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("validation tried to use the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    item = make_item(utm_raster, collection_id="demo")
    checked = validate_item_offline(as_dict(item), SCHEMAS_DIR)
    assert checked[0].endswith("/item-spec/json-schema/item.json")
    assert {u.split("/")[3] for u in checked[1:]} == {"projection", "raster", "file"}
    assert validate_item_offline(item, SCHEMAS_DIR) == checked


@needs_schemas
def test_invalid_items_are_reported(utm_raster):
    data = as_dict(make_item(utm_raster))
    data["properties"]["proj:shape"] = ["300", 400]
    data["assets"]["data"]["file:size"] = "big"
    with pytest.raises(TaskError, match=r"is invalid: .*projection: properties/proj:shape/0.*file: "
                                        r"assets/data/file:size"):
        validate_item_offline(data, SCHEMAS_DIR)
    unknown = as_dict(make_item(utm_raster))
    unknown["stac_extensions"].append("https://stac-extensions.github.io/eo/v1.1.0/schema.json")
    with pytest.raises(TaskError, match="no local schema for https://stac-extensions.github.io/eo/"):
        validate_item_offline(unknown, SCHEMAS_DIR)
    with pytest.raises(TaskError, match="not a STAC Item or Collection"):
        validate_item_offline({"type": "FeatureCollection"}, SCHEMAS_DIR)


# -------------------------------------------------------------------------------------- collections
def test_collection_extent_is_the_union(utm_raster, tmp_path):
    later = WHEN + timedelta(days=10)
    other = write_raster(tmp_path / "other.tif", smooth_image(1, 50, 50), crs="EPSG:4326",
                         transform=from_origin(10, 50, 0.01, 0.01))
    first = make_item(utm_raster, datetime=WHEN)
    second = make_item(other, blob="b.tif", datetime=later)
    collection = build_collection("demo", [first], description="Demo rasters")
    assert collection.extent.spatial.bboxes == [first.bbox]
    merged = merge_extent(as_dict(collection), second)
    bbox = merged["extent"]["spatial"]["bbox"][0]
    assert bbox == [first.bbox[0], first.bbox[1], second.bbox[2], second.bbox[3]]
    assert merged["extent"]["temporal"]["interval"][0] == [pystac.utils.datetime_to_str(WHEN),
                                                          pystac.utils.datetime_to_str(later)]
    assert as_dict(collection)["extent"]["spatial"]["bbox"][0] == first.bbox  # input untouched
    assert merge_extent(merged, first) == merged  # already covered: unchanged
    both = build_collection("demo", [second, first])
    assert as_dict(both)["extent"] == merged["extent"]
    with pytest.raises(ValueError, match="at least one item"):
        build_collection("empty")


@needs_schemas
def test_collections_validate_offline(utm_raster):
    collection = build_collection("demo", [make_item(utm_raster)])
    assert validate_item_offline(as_dict(collection), SCHEMAS_DIR)[0].endswith("collection.json")


def test_bbox_union_is_antimeridian_aware():
    crossing = [170, -20, -170, -10]
    assert union_bbox(crossing, [175, 0, 179, 5]) == [170, -20, -170, 5]
    assert union_bbox(crossing, [10, 0, 20, 5]) == [10, -20, -170, 5]
    assert union_bbox([-10, 0, 10, 1], [20, 0, 30, 1]) == [-10, 0, 30, 1]
    assert union_bbox(crossing, [-175, 0, 175, 5]) == [-180, -20, 180, 5]
    assert union_bbox([-180, -90, 180, 90], [1, 1, 2, 2]) == [-180, -90, 180, 90]
    assert union_bbox([0, 0, 0, 10, 10, 5], [5, 5, 20, 20]) == [0, 0, 20, 20]


def test_open_interval_stays_open(utm_raster):
    data = as_dict(build_collection("demo", [make_item(utm_raster)]))
    data["extent"]["temporal"]["interval"] = [[None, "2020-01-01T00:00:00Z"]]
    merged = merge_extent(data, make_item(utm_raster, datetime=datetime(2030, 1, 1, tzinfo=UTC)))
    assert merged["extent"]["temporal"]["interval"] == [[None, "2030-01-01T00:00:00Z"]]


def test_masks_do_not_change_the_footprint(tmp_path):
    data = smooth_image(1, 40, 40)
    mask = np.zeros((40, 40), dtype="uint8")
    mask[10:20, 10:20] = 255
    path = write_raster(tmp_path / "m.tif", data, mask=mask)
    plain = write_raster(tmp_path / "p.tif", data)
    assert as_dict(make_item(path))["bbox"] == as_dict(make_item(plain))["bbox"]


def test_huge_integral_nodata_stays_a_float_json_encoders_accept():
    """float32's lowest value is integral as a float; as an int it would overflow 64-bit JSON encoders."""
    import orjson

    from services_stac import _nodata

    assert _nodata(-3.4028234663852886e38) == -3.4028234663852886e38
    assert isinstance(_nodata(-3.4028234663852886e38), float)
    assert _nodata(0.0) == 0 and isinstance(_nodata(0.0), int)
    orjson.dumps({"nodata": _nodata(-3.4028234663852886e38)})

"""Real-world rasters (issue #12), service level: sidecars beside a raster are part of it, footprints come from
what is on the Earth, hostile sidecars are refused or ignored without a leak.

Every file is written here: a mask in a ``.msk`` (rasterio with ``GDAL_TIFF_INTERNAL_MASK=NO``, as GDAL writes
for JPEG imagery), georeferencing in an ``.aux.xml`` or a world file + ``.prj`` beside an ungeoreferenced TIFF,
a geostationary full disk (corners in space) and a polar stereographic grid over the North Pole. Where GDAL on
a local disk is the reference, the test opens the same folder with plain rasterio and compares.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest_geo import (
    AUX_GEOREF, GEOS, SCHEMAS_DIR, SECRET, UTM33, bare_scene, check_geojson, geos_disk, masked_scene, needs_schemas,
    no_secret_in, polar_grid, raw_vrt, remote_vrt, secret_file, smooth_image, write_raster,
)
from rasterio.crs import CRS
from rasterio.transform import from_bounds, from_origin

from errors import ErrorCode, NoGeotransformError, NotARasterError, OffGlobeError, error_code
from services_cog import create_cog
from services_cog_options import CogOptions, CogProfile
from services_footprint import footprint_wgs84
from services_raster import validate_raster
from services_sidecars import (
    SidecarError, companions, is_sidecar_name, listing_prefix, parse_aux_xml, parse_prj, parse_world_file,
    sidecar_names,
)
from services_source import RasterSource, Sidecars, TextSidecar, open_raster
from services_stac import build_item, validate_item_offline

WHEN = "2020-01-02T03:04:05Z"


# ------------------------------------------------------------------------------------------------ files
def mask_sidecars(path: Path) -> Sidecars:
    return Sidecars(mask=RasterSource(path=f"{path}.msk", label="in/scene.tif.msk"))


# ------------------------------------------------------------------------------------------------ names
def test_sidecar_names_are_what_gdal_looks_for():
    names = sidecar_names("d/scene.tif")
    for expected in ("d/scene.tif.msk", "d/scene.tif.ovr", "d/scene.tif.aux.xml", "d/scene.tfw", "d/scene.tifw",
                     "d/scene.wld", "d/scene.prj", "d/scene.TFW"):
        assert expected in names
    assert all(name.startswith(listing_prefix("d/scene.tif")) for name in names)  # one listing finds them all
    assert is_sidecar_name("d/scene.tif.msk") and is_sidecar_name("x.TFW") and not is_sidecar_name("x.tif")
    assert companions(["a.tif", "a.tif.msk", "a.tfw", "b.tif", "c.tif.ovr"]) == {"a.tif": ["a.tfw", "a.tif.msk"]}


# ------------------------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("jpeg", [False, True], ids=["deflate", "jpeg-ycbcr"])
def test_a_msk_sidecar_is_the_rasters_mask_in_validation_and_in_the_cog(tmp_path, jpeg):
    src, mask = masked_scene(tmp_path, jpeg=jpeg)
    with rasterio.open(src) as local:  # the reference: GDAL on a local disk uses the .msk
        assert np.array_equal(local.dataset_mask(), mask)
    assert not validate_raster(src).has_mask  # the gate alone sees no sidecar (issue #8)
    info = validate_raster(src, sidecars=mask_sidecars(src))
    assert info.has_mask and info.validity == "mask" and info.sidecars == ["in/scene.tif.msk"]
    profile = CogProfile.JPEG if jpeg else CogProfile.DEFLATE
    result = create_cog(src, tmp_path / "out" / "cog.tif", CogOptions(cog_profile=profile),
                        sidecars=mask_sidecars(src))
    assert result.validity == "mask"
    with rasterio.open(result.dst_path) as out:
        assert np.array_equal(out.dataset_mask(), mask)  # the output's mask equals the source's
        assert out.files == [result.dst_path]  # inside the COG, no sidecar
        if not jpeg:
            with rasterio.open(src) as local:
                valid = mask > 0
                assert np.array_equal(out.read()[:, valid], local.read()[:, valid])


def test_a_msk_sidecar_is_kept_through_reprojection(tmp_path):
    src, mask = masked_scene(tmp_path, size=300)
    result = create_cog(src, tmp_path / "cog.tif", CogOptions(target_crs="EPSG:4326"), sidecars=mask_sidecars(src))
    with rasterio.open(src) as local, rasterio.open(result.dst_path) as out:
        from rasterio.vrt import WarpedVRT
        with WarpedVRT(local, crs="EPSG:4326", transform=out.transform, width=out.width, height=out.height,
                       add_alpha=True) as ref:
            expected = ref.dataset_mask()  # GDAL's own warp of the masked source (it knows the .msk locally)
        got = out.dataset_mask()
    assert got.shape == expected.shape
    assert np.mean(got == expected) > 0.995, np.mean(got == expected)  # the same, up to edge pixels
    assert 0.3 < np.mean(got > 0) < 0.6


def test_an_internal_mask_comes_before_a_msk(tmp_path):
    data = smooth_image(1, 100, 100)
    inner = np.full((100, 100), 255, "uint8")
    inner[:10] = 0
    src = write_raster(tmp_path / "scene.tif", data, mask=inner)
    other = write_raster(tmp_path / "other.tif", np.zeros((1, 100, 100), "uint8"))
    with open_raster(src, sidecars=Sidecars(mask=RasterSource(path=str(other)))) as raster:
        assert raster.mask is None and np.array_equal(raster.read_mask(), inner)


# ---------------------------------------------------------------------------------------- georeferencing
def test_an_aux_xml_georeferences_an_ungeoreferenced_tiff_like_gdal_does(tmp_path):
    src = bare_scene(tmp_path)
    (tmp_path / "bare.tif.aux.xml").write_text(AUX_GEOREF)
    with rasterio.open(src) as local:  # the reference: GDAL with PAM on a local disk
        reference = (local.crs, local.transform, local.nodata)
    with pytest.raises(NoGeotransformError) as err:
        validate_raster(src)  # alone, the file is not georeferenced
    assert err.value.code == "no_geotransform"
    aux = Sidecars(aux_xml=TextSidecar(name="in/bare.tif.aux.xml", content=AUX_GEOREF.encode()))
    info = validate_raster(src, sidecars=aux)
    assert (CRS.from_wkt(info.crs_wkt), tuple(info.transform), info.nodata) == (
        reference[0], tuple(reference[1])[:6], reference[2])
    assert info.epsg == 32633 and info.tiff_datetime.isoformat() == "2019-07-01T10:20:30+00:00"
    assert any("not honoured: <PAMRasterBand band='1'><Histograms>" in w for w in info.warnings), info.warnings
    result = create_cog(src, tmp_path / "cog.tif", sidecars=aux)
    with rasterio.open(result.dst_path) as out:
        assert (out.crs, out.transform, out.nodata) == reference
        assert out.tags()["TIFFTAG_DATETIME"] == "2019:07:01 10:20:30" and out.tags()["SOURCE"] == "scanner 7"
        with rasterio.open(src) as local:
            assert np.array_equal(out.read(), local.read())


def test_a_world_file_and_prj_georeference_an_ungeoreferenced_tiff(tmp_path):
    src = bare_scene(tmp_path)
    world = b"20.0\n0.0\n0.0\n-20.0\n400010.0\n4999990.0\n"  # centre of the upper-left pixel
    (tmp_path / "bare.tfw").write_bytes(world)
    with rasterio.open(src) as local:  # GDAL reads the world file for the transform (not the .prj)
        expected_transform = local.transform
    assert tuple(expected_transform)[:6] == parse_world_file(world) == (20.0, 0.0, 400_000.0, 0.0, -20.0, 5_000_000.0)
    prj = UTM33.to_wkt(version="WKT1_ESRI").encode()
    sidecars = Sidecars(world_file=TextSidecar(name="in/bare.tfw", content=world),
                        prj=TextSidecar(name="in/bare.prj", content=prj))
    info = validate_raster(src, sidecars=sidecars)
    assert info.sidecars == ["in/bare.tfw", "in/bare.prj"] and CRS.from_wkt(info.crs_wkt).to_epsg() == 32633
    result = create_cog(src, tmp_path / "cog.tif", sidecars=sidecars)
    with rasterio.open(result.dst_path) as out:
        assert out.transform == expected_transform and out.crs.to_epsg() == 32633


def test_text_sidecars_are_checked_before_use():
    with pytest.raises(SidecarError, match="6 numbers"):
        parse_world_file(b"1\n0\n0\n-1\n/etc/passwd\n0\n")
    with pytest.raises(SidecarError, match="degenerate"):
        parse_world_file(b"0\n0\n0\n0\n0\n0\n")
    for text in (b"+proj=longlat +nadgrids=@/etc/passwd", b"/etc/passwd", b"http://example.com/crs"):
        with pytest.raises(SidecarError, match="not WKT"):
            parse_prj(text)
    with pytest.raises(SidecarError, match="not a GDAL <PAMDataset>"):
        parse_aux_xml(b"<VRTDataset/>")
    with pytest.raises(SidecarError, match="DTDs and entities"):
        parse_aux_xml(b'<!DOCTYPE p [<!ENTITY e SYSTEM "file:///etc/passwd">]><PAMDataset>&e;</PAMDataset>')


# ------------------------------------------------------------------------------------ hostile sidecars
def test_an_aux_xml_redirecting_overviews_or_sources_is_not_honoured(tmp_path, loopback):
    listener = loopback
    data = smooth_image(1, 600, 600)
    src = write_raster(tmp_path / "scene.tif", data, tiled=True, blockxsize=256, blockysize=256)
    hostile = (f'<PAMDataset><Metadata domain="OVERVIEWS"><MDI key="OVERVIEW_FILE">/vsicurl/{listener.url}/o.tif'
               f'</MDI></Metadata><Metadata><MDI key="LEAK">/vsicurl/{listener.url}/m</MDI>'
               f'<MDI key="FILE">{secret_file(tmp_path)}</MDI></Metadata>'
               f'<VRTRasterBand><SimpleSource><SourceFilename>/vsicurl/{listener.url}/s.tif</SourceFilename>'
               f'</SimpleSource></VRTRasterBand><GeoTransform>/vsicurl/{listener.url}/g</GeoTransform></PAMDataset>')
    sidecars = Sidecars(aux_xml=TextSidecar(name="in/scene.tif.aux.xml", content=hostile.encode()))
    info = validate_raster(src, sidecars=sidecars)
    assert info.overviews == [] and info.sidecars == []
    assert info.transform == tuple(from_origin(500_000, 4e6, 30, 30))[:6]
    notes = " ".join(info.warnings)
    for ignored in ("<Metadata domain='OVERVIEWS'>", "metadata 'LEAK' naming a path or URL", "<VRTRasterBand>",
                    "<GeoTransform> naming a path or URL"):
        assert ignored in notes, notes
    result = create_cog(src, tmp_path / "cog.tif", sidecars=sidecars)
    with rasterio.open(result.dst_path) as out:
        assert np.array_equal(out.read(1), data[0]) and "LEAK" not in out.tags() and "FILE" not in out.tags()
    assert listener.hits == [] and no_secret_in(json.dumps(info.model_dump(mode="json")))


@pytest.mark.parametrize("target", ["local", "loopback"])
def test_a_msk_that_is_a_vrt_is_refused_without_a_read(tmp_path, loopback, target):
    listener = loopback
    src = write_raster(tmp_path / "scene.tif", smooth_image(1, 64, 64))
    msk = tmp_path / "scene.tif.msk"
    vrt = raw_vrt(str(secret_file(tmp_path))) if target == "local" else remote_vrt(f"{listener.url}/m.tif")
    flags = '<Metadata><MDI key="INTERNAL_MASK_FLAGS_1">2</MDI></Metadata><SRS>'  # what GDAL's .msk files say
    msk.write_text(vrt.replace('rasterYSize="4"', 'rasterYSize="64"').replace("<SRS>", flags))
    if target == "local":  # GDAL on a local disk opens the VRT as the mask and reads the secret file
        with rasterio.open(src) as local:
            assert SECRET.encode()[:20] in local.read_masks(1).tobytes()
    seen = len(listener.hits)
    sidecars = Sidecars(mask=RasterSource(path=str(msk), label="in/scene.tif.msk"))
    for attempt in (lambda: validate_raster(src, sidecars=sidecars),
                    lambda: create_cog(src, tmp_path / "cog.tif", sidecars=sidecars)):
        with pytest.raises(NotARasterError, match=r"^not a raster: in/scene\.tif\.msk: .*VRT XML") as err:
            attempt()
        assert err.value.code == "not_a_raster" and no_secret_in(err.value.message)
    assert listener.hits[seen:] == [] and not (tmp_path / "cog.tif").exists()


# ------------------------------------------------------------------------------------------- footprints
@needs_schemas
@pytest.mark.parametrize("lon_0", [0.0, 140.7], ids=["meteosat-0E", "himawari-140.7E"])
def test_a_geostationary_full_disk_has_the_earths_disk_as_footprint(tmp_path, lon_0):
    src = geos_disk(tmp_path, lon_0=lon_0)
    info = validate_raster(src)  # the corners are space: it failed with "cannot place the raster on the globe"
    item = build_item(info, container="in", blob="geos.tif", href="https://a/in/geos.tif", datetime=None,
                      last_modified=__import__("datetime").datetime(2024, 1, 1, tzinfo=__import__("datetime").UTC))
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    check_geojson(data["geometry"], data["bbox"])
    west, south, east, north = data["bbox"]
    assert 79 < north < 81.5 and -81.5 < south < -79  # the limb, about 81 degrees from the sub-satellite point
    if lon_0 == 0:
        assert data["geometry"]["type"] == "Polygon" and -81.5 < west < -79 and 79 < east < 81.5
    else:  # 59.4E .. 222E: split at the antimeridian, bbox west > east
        assert data["geometry"]["type"] == "MultiPolygon" and west > east
        assert 58 < west < 61 and -140 < east < -136
    assert tuple(data["bbox"]) == tuple(round(v, 9) for v in info.bounds_wgs84)
    validate_item_offline(data, SCHEMAS_DIR)


@needs_schemas
def test_a_raster_over_the_pole_has_a_footprint_that_covers_it(tmp_path):
    info = validate_raster(polar_grid(tmp_path))
    geometry, bbox = footprint_wgs84(info)
    check_geojson(geometry, bbox)
    assert bbox[0] == -180 and bbox[2] == 180 and bbox[3] == 90 and 60 < bbox[1] < 70
    assert info.bounds_wgs84[3] == 90


def test_only_a_raster_with_no_pixel_on_the_earth_fails_off_globe(tmp_path):
    space = write_raster(tmp_path / "space.tif", smooth_image(1, 64, 64), crs=GEOS,
                         transform=from_bounds(5.5e6, 5.5e6, 9e6, 9e6, 64, 64))  # beyond the limb
    with pytest.raises(OffGlobeError, match=r"^off_globe: .*space\.tif: no pixel of the raster lies on the Earth"):
        validate_raster(space)
    corner = write_raster(tmp_path / "corner.tif", smooth_image(1, 64, 64), crs=GEOS,
                          transform=from_bounds(3e6, 3e6, 7e6, 7e6, 64, 64))  # one corner is on the disk
    info = validate_raster(corner)
    check_geojson(*footprint_wgs84(info))


# ------------------------------------------------------------------------------------------- error codes
def test_every_raster_failure_carries_its_code(tmp_path):
    cases = {ErrorCode.NO_GEOTRANSFORM: bare_scene(tmp_path),
             ErrorCode.NO_CRS: write_raster(tmp_path / "nocrs.tif", smooth_image(1, 32, 32), crs=None)}
    (tmp_path / "text.tif").write_text("hello")
    cases[ErrorCode.NOT_A_RASTER] = tmp_path / "text.tif"
    full = write_raster(tmp_path / "full.tif", smooth_image(3, 600, 600), tiled=True, blockxsize=256,
                        blockysize=256, compress="deflate")
    (tmp_path / "cut.tif").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cases[ErrorCode.CORRUPT_RASTER] = tmp_path / "cut.tif"
    for code, path in cases.items():
        with pytest.raises(Exception) as err:
            validate_raster(path)
        assert error_code(err.value) == code, (path, err.value)
    with pytest.raises(Exception) as err:
        create_cog(write_raster(tmp_path / "u16.tif", smooth_image(1, 32, 32, "uint16")), tmp_path / "o.tif",
                   CogOptions(cog_profile=CogProfile.JPEG))
    assert error_code(err.value) == ErrorCode.UNSUPPORTED_DTYPE

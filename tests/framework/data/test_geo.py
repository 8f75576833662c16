"""GeoTIFF in, mask (or target id) GeoTIFF and GeoJSON out: re-read with rasterio and shapely, coordinates on the
input's grid."""

import json

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from shapely.geometry import shape

from framework.core.errors import DataError
from framework.data.geo import (
    GeoReference,
    atomic_output,
    read_geotiff,
    targets_geojson,
    write_json,
    write_mask_geotiff,
)

UTM = CRS.from_epsg(32640)  # WGS 84 / UTM 40N (Dubai)
TRANSFORM = from_origin(300000.0, 2780000.0, 0.5, 0.5)  # 0.5 m pixels, north up


def write_tiff(path, bands: np.ndarray, crs=UTM, transform=TRANSFORM, **extra) -> None:
    """bands [C,H,W]."""
    count, height, width = bands.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": count, "dtype": bands.dtype.name}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with rasterio.open(path, "w", **profile, **extra) as dst:
        dst.write(bands)


def test_multiband_16bit_geotiff_reads_with_band_selection_and_scaling(tmp_path):
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 65535, (4, 40, 50), dtype=np.uint16)  # e.g. B, G, R, NIR
    write_tiff(tmp_path / "s.tif", bands, compress="lzw")  # LZW: tifffile would need imagecodecs, rasterio not
    pixels, geo = read_geotiff(tmp_path / "s.tif", bands=[3, 2, 1], scale=257)
    expected = np.clip(np.rint(np.moveaxis(bands[[2, 1, 0]], 0, -1) / 257.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)
    assert geo.crs == UTM and geo.transform == TRANSFORM and geo.pixel_area_m2 == pytest.approx(0.25)
    with pytest.raises(DataError, match="4 bands, neither grey nor RGB"):
        read_geotiff(tmp_path / "s.tif", bands=None, scale=257)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_plain_tiff_has_no_georeference_and_garbage_is_a_data_error(tmp_path):
    write_tiff(tmp_path / "p.tif", np.zeros((3, 8, 8), np.uint8), crs=None, transform=None)
    assert read_geotiff(tmp_path / "p.tif", None, "auto")[1] is None
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match="bad.tif: unreadable raster"):
        read_geotiff(tmp_path / "bad.tif", None, "auto")


def square_mask() -> np.ndarray:
    mask = np.zeros((60, 80), bool)
    mask[10:20, 20:40] = True  # rows 10-19, columns 20-39
    mask[40:45, 60:62] = True
    return mask


def test_mask_geotiff_keeps_crs_transform_and_values(tmp_path):
    mask = square_mask()
    write_mask_geotiff(tmp_path / "m.tif", mask, GeoReference(TRANSFORM, UTM))
    with rasterio.open(tmp_path / "m.tif") as src:
        assert src.crs == UTM and src.transform == TRANSFORM and src.count == 1
        np.testing.assert_array_equal(src.read(1), mask.astype(np.uint8))
        assert src.colormap(1)[1][:3] == (255, 0, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]  # no temporary file left


def test_geojson_polygons_lie_on_the_pixels_in_the_input_crs(tmp_path):
    ids = square_mask().astype(np.uint8)
    ids[40:] *= 2  # the small rectangle is target 1
    collection = targets_geojson(ids, [{"target_id": 0}, {"target_id": 1}], GeoReference(TRANSFORM, UTM),
                                 {"question": "q?", "score": 0.9})
    write_json(tmp_path / "m.geojson", collection)
    data = json.loads((tmp_path / "m.geojson").read_text())
    assert data["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32640"
    features = data["features"]
    assert [f["properties"]["area_px"] for f in features] == [200, 10]
    assert features[0]["properties"] == {"question": "q?", "score": 0.9, "target_id": 0, "area_px": 200,
                                         "area_m2": 50.0}
    polygon = shape(features[0]["geometry"])
    # pixel (row 10, col 20) top-left corner .. (row 20, col 40) bottom-right corner through the transform
    west, north = TRANSFORM @ (20, 10)
    east, south = TRANSFORM @ (40, 20)
    assert polygon.bounds == pytest.approx((west, south, east, north))
    assert polygon.area == pytest.approx(200 * 0.25)


def test_pixels_that_touch_at_a_corner_give_a_valid_geometry_of_the_same_area():
    mask = np.zeros((8, 8), bool)
    mask[1:4, 1:4] = mask[4:7, 4:7] = True  # two squares, one corner shared: one 8-connected region
    mask[2, 2] = False  # and a hole
    (feature,) = targets_geojson(mask.astype(np.uint8), [{}], GeoReference(TRANSFORM, UTM), {})["features"]
    polygon = shape(feature["geometry"])
    assert polygon.is_valid and feature["properties"]["area_px"] == mask.sum()
    assert polygon.area == pytest.approx(mask.sum() * 0.25)


def test_no_targets_is_one_unlocated_no_target_feature(tmp_path):
    collection = targets_geojson(np.zeros((8, 8), np.uint8), [], GeoReference(TRANSFORM, UTM), {"question": "q?",
                                                                                                "score": 0})
    write_json(tmp_path / "m.geojson", collection)
    (feature,) = json.loads((tmp_path / "m.geojson").read_text())["features"]
    assert feature == {"type": "Feature", "geometry": None,
                       "properties": {"question": "q?", "score": 0, "no_target": True, "area_px": 0}}


def test_a_target_id_map_geotiff_keeps_its_type_values_and_colours(tmp_path):
    ids = square_mask().astype(np.uint16) * 300
    colours = {0: (0, 0, 0, 0), 300: (60, 180, 75, 255)}
    write_mask_geotiff(tmp_path / "ids.tif", ids, GeoReference(TRANSFORM, UTM), colours)
    with rasterio.open(tmp_path / "ids.tif") as src:
        assert src.dtypes == ("uint16",) and src.crs == UTM and src.transform == TRANSFORM
        np.testing.assert_array_equal(src.read(1), ids)
        assert src.colormap(1)[300] == (60, 180, 75, 255)


def test_targets_geojson_is_one_multipolygon_feature_per_target():
    """A target of two regions is one valid MultiPolygon feature; the target's properties win over the shared ones;
    no targets is the empty mask's unlocated feature."""
    geo = GeoReference(TRANSFORM, UTM)
    ids = square_mask().astype(np.uint16)
    ids[50:55, 0:4] = 2
    collection = targets_geojson(ids, [{"target_id": 0, "score": 0.8}, {"target_id": 1, "score": 0.6}], geo,
                                 {"question": "q?", "score": 0.9})
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32640"
    features = collection["features"]
    geometries = [shape(f["geometry"]) for f in features]
    assert [g.geom_type for g in geometries] == ["MultiPolygon", "Polygon"] and all(g.is_valid for g in geometries)
    assert [f["properties"] for f in features] == [
        {"question": "q?", "score": 0.8, "target_id": 0, "area_px": 210, "area_m2": 52.5},
        {"question": "q?", "score": 0.6, "target_id": 1, "area_px": 20, "area_m2": 5.0}]
    assert geometries[0].area == pytest.approx(210 * 0.25)


def test_without_crs_nothing_claims_one(tmp_path):
    geo = GeoReference(TRANSFORM, None)
    assert geo.pixel_area_m2 is None and geo.describe() == "no CRS"
    write_mask_geotiff(tmp_path / "m.tif", square_mask(), geo)
    with rasterio.open(tmp_path / "m.tif") as src:
        assert src.crs is None and src.transform == TRANSFORM
    collection = targets_geojson(square_mask().astype(np.uint8), [{}], geo, {})
    assert "crs" not in collection and "area_m2" not in collection["features"][0]["properties"]


def test_geographic_crs_has_no_metric_pixel_area():
    assert GeoReference(from_origin(55.0, 25.0, 1e-5, 1e-5), CRS.from_epsg(4326)).pixel_area_m2 is None


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "x.json") as temporary:
        temporary.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

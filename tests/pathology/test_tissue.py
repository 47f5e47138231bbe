"""Tissue detection, polygons, GeoJSON and tile tissue fractions, against hand-made masks and the synthetic
slide's known layout (synthetic: real H&E texture painted into known rectangles)."""

import json

import numpy as np
import pytest
from domainfm.errors import DataError
from domainfm.pathology.geojson import read_geojson, write_geojson
from domainfm.pathology.tissue import (
    TissueParams,
    detect_tissue,
    mask_to_polygons,
    rasterize,
    saturation,
    tile_tissue_fraction,
)
from scipy import ndimage as ndi
from skimage.color import rgb2hsv

from tests.pathology import synthetic

SEG = 16  # level-0 px per mask px at 8 um/px on the 0.5 um/px synthetic slide


def truth_mask() -> np.ndarray:
    """The synthetic slide's tissue at 8 um/px: both pieces minus the hole; the speck is too small to count."""
    mask = np.zeros((synthetic.SIZE[1] // SEG, synthetic.SIZE[0] // SEG), bool)
    for x0, y0, x1, y1 in synthetic.TISSUE:
        mask[y0 // SEG : y1 // SEG, x0 // SEG : x1 // SEG] = True
    x0, y0, x1, y1 = synthetic.HOLE
    mask[y0 // SEG : y1 // SEG, x0 // SEG : x1 // SEG] = False
    return mask


@pytest.fixture(scope="module")
def thumb(pyramid):
    from domainfm.pathology.slide import open_slide

    with open_slide(pyramid) as s:
        return s.thumbnail(8.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_saturation_is_hsv_saturation():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.abs(saturation(rgb).astype(float) - rgb2hsv(rgb)[..., 1] * 255).max() <= 0.5 + 1e-9
    assert saturation(np.zeros((2, 2, 3), np.uint8)).max() == 0  # black: no division by zero


def test_blur_equals_clam_median_then_threshold():
    # the box-filter majority vote equals thresholding CLAM's median-blurred saturation (odd kernel)
    rng = np.random.default_rng(1)
    blobs = ndi.gaussian_filter(rng.random((96, 96)), 3)
    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[..., 0] = 255
    rgb[..., 1] = rgb[..., 2] = (255 * (1 - (blobs - blobs.min()) / np.ptp(blobs))).astype(np.uint8)
    params = TissueParams(use_otsu=False, sthresh=120, mthresh=7, close=0, min_area_mm2=0, min_hole_mm2=0)
    expected = ndi.median_filter(saturation(rgb), size=7, mode="nearest") > 120
    np.testing.assert_array_equal(detect_tissue(rgb, 8.0, params), expected)
    assert 0.2 < expected.mean() < 0.8


def test_detects_the_synthetic_layout(thumb):
    mask = detect_tissue(thumb, 8.0)
    assert mask.shape == (128, 192)
    assert iou(mask, truth_mask()) > 0.95
    x0, y0, x1, y1 = (v // SEG for v in synthetic.SPECK)
    assert not mask[y0:y1, x0:x1].any()  # below the minimum area
    x0, y0, x1, y1 = (v // SEG for v in synthetic.HOLE)
    assert not mask[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].any()  # a kept hole


def test_area_and_hole_filters(thumb):
    truth = truth_mask()
    # the second piece is 0.147 mm2: a 0.2 mm2 minimum drops it, keeps the first (0.442 mm2)
    only_first = detect_tissue(thumb, 8.0, TissueParams(min_area_mm2=0.2))
    assert not only_first[:, 2048 // SEG :].any() and iou(only_first[:, : 2048 // SEG], truth[:, : 2048 // SEG]) > 0.95
    # the hole (0.147 mm2) is filled when holes must be larger, or when no hole may be kept
    x0, y0, x1, y1 = (v // SEG for v in synthetic.HOLE)
    assert detect_tissue(thumb, 8.0, TissueParams(min_hole_mm2=0.5))[y0:y1, x0:x1].all()
    assert detect_tissue(thumb, 8.0, TissueParams(max_n_holes=0))[y0:y1, x0:x1].all()


def test_polygons_geojson_round_trip(thumb, tmp_path):
    mask = detect_tissue(thumb, 8.0)
    polygons = mask_to_polygons(mask, (SEG, SEG))
    assert len(polygons) == 2
    first = max(polygons, key=lambda p: p.area)
    assert len(first.interiors) == 1
    # areas in level-0 px^2 against the layout: (1536^2 - 768^2) and 768^2, within 3 %
    assert first.area == pytest.approx(1536**2 - 768**2, rel=0.03)
    assert min(p.area for p in polygons) == pytest.approx(768**2, rel=0.03)
    write_geojson(polygons, tmp_path / "t.geojson")
    data = json.loads((tmp_path / "t.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    assert data["features"][0]["properties"]["classification"]["name"] == "Tissue"
    back = rasterize(read_geojson(tmp_path / "t.geojson"), mask.shape, (SEG, SEG))
    assert iou(back, mask) > 0.97


def test_geojson_without_polygons_is_a_data_error(tmp_path):
    path = tmp_path / "points.geojson"
    path.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}))
    with pytest.raises(DataError, match="no Polygon"):
        read_geojson(path)
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(DataError, match="bad.geojson"):
        read_geojson(tmp_path / "bad.geojson")


def test_tile_tissue_fraction_by_hand():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half is tissue
    coords = np.array([[0, 0], [5, 0], [3, 0], [8, 8], [0, 6]])
    sizes = tile_tissue_fraction(mask, coords, 4, (1.0, 1.0))
    # (0,0)-(4,4): all tissue; (5,0): none; (3,0): columns 3,4 of 3..6 = 1/2; (8,8): beyond the mask = 0;
    # (0,6): rows 6..9 inside, of 4 -> all tissue
    np.testing.assert_allclose(sizes, [1.0, 0.0, 0.5, 0.0, 1.0])
    # 2 level-0 px per mask px: a 10 px tile at (0,0) is mask [0,5)^2, all tissue; at (6,0) columns 3..7: 2 of 5
    np.testing.assert_allclose(tile_tissue_fraction(mask, np.array([[0, 0], [6, 0]]), 10, (2.0, 2.0)), [1.0, 0.4])

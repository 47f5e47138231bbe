"""Tiling one slide and batches: the grid against hand-computed tiles on the synthetic slide (synthetic: known
tissue rectangles), the TRIDENT/CLAM .h5 layout, the real Aperio slide, resume, changed parameters, failures."""

import csv
import json
import os

import h5py
import numpy as np
import openslide
import pytest
from domainfm.errors import ConfigError, DataError
from domainfm.pathology.h5io import atomic_output, read_coords
from domainfm.pathology.tiling import SlideJob, TilingParams, grid, tile_slide, tile_slides
from PIL import Image

from tests.pathology import synthetic


def coords_set(path) -> set[tuple[int, int]]:
    return set(map(tuple, read_coords(path)[0].tolist()))


def test_grid_by_hand():
    # 1000 x 600 slide, 256 px tiles every 128 px: x in 0..896 (8), y in 0..512 (5), row by row
    coords = grid(1000, 600, 256, 128)
    assert coords.dtype == np.int64 and coords.shape == (40, 2)
    assert coords[:3].tolist() == [[0, 0], [128, 0], [256, 0]] and coords[-1].tolist() == [896, 512]


def test_synthetic_slide_tiles_and_h5_layout(pyramid, tmp_path):
    result = tile_slide(pyramid, tmp_path)
    assert result.status == "tiled" and result.tiles == 36
    h5 = tmp_path / "patches" / "pyramid.h5"
    assert coords_set(h5) == synthetic.expected_tiles(256)
    expected = {
        "patch_size": 256,
        "patch_size_level0": 256,
        "level0_magnification": 20,
        "target_magnification": 20,
        "target_mpp": 0.5,
        "overlap": 0,
        "level0_width": 3072,
        "level0_height": 2048,
    }
    with h5py.File(h5) as f:
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (36, 2)
        for key, value in expected.items():  # on "coords" as TRIDENT reads them, and on the file
            assert f["coords"].attrs[key] == value and f.attrs[key] == value, key
        assert (f["tissue_fraction"][:] >= 0.3).all()
    with Image.open(tmp_path / "overlays" / "pyramid.png") as im:
        assert im.format == "PNG" and im.size == (1024, 683)
    features = json.loads((tmp_path / "contours_geojson" / "pyramid.geojson").read_text())["features"]
    assert len(features) == 2
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_target_mpp_and_tile_in_micrometres(pyramid, tmp_path):
    # 128 px at 1.0 um/px = 256 level-0 px: the same grid, written at 10x
    tile_slide(pyramid, tmp_path / "a", TilingParams(target_mpp=1.0, tile_px=128))
    coords, attrs = read_coords(tmp_path / "a" / "patches" / "pyramid.h5")
    assert set(map(tuple, coords.tolist())) == synthetic.expected_tiles(256)
    assert (attrs["patch_size"], attrs["patch_size_level0"], attrs["target_magnification"]) == (128, 256, 10)
    # 64 um at 0.5 um/px = 128 px tiles: four per 256 tile
    tile_slide(pyramid, tmp_path / "b", TilingParams(tile_um=64))
    assert coords_set(tmp_path / "b" / "patches" / "pyramid.h5") == synthetic.expected_tiles(128)


def test_invalid_tiling_parameters():
    with pytest.raises(ConfigError, match="overlap"):
        TilingParams(tile_px=256, overlap=256).validate()
    with pytest.raises(ConfigError, match="min_tissue"):
        TilingParams(min_tissue=1.5).validate()


def test_manual_geojson_replaces_detection(pyramid, tmp_path):
    x0, y0, x1, y1 = synthetic.TISSUE[1]
    polygon = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    path = tmp_path / "pyramid.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [polygon]}))
    tile_slide(SlideJob(pyramid, geojson=path), tmp_path / "out")
    expected = {(x, y) for x in range(x0, x1, 256) for y in range(y0, y1, 256)}
    assert coords_set(tmp_path / "out" / "patches" / "pyramid.h5") == expected


def test_real_slide_without_touching_label_or_macro(cmu_slide, tmp_path, monkeypatch):
    def forbidden(self):
        raise AssertionError("associated images (label, macro) must never be read")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(forbidden))
    result = tile_slide(cmu_slide, tmp_path)
    coords, attrs = read_coords(tmp_path / "patches" / "CMU-1-Small-Region.h5")
    assert 30 <= result.tiles == len(coords) <= 60
    assert attrs["level0_mpp"] == 0.499 and attrs["patch_size_level0"] == 256 and attrs["level0_magnification"] == 20
    tiles = set(map(tuple, coords.tolist()))
    assert (1024, 2560) in tiles and (0, 0) not in tiles and (1792, 0) not in tiles  # tissue / glass
    assert all(x % 256 == 0 and y % 256 == 0 for x, y in tiles)
    text = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"b414003d" not in text and b"ScanScope" not in text  # no slide metadata (user id, scanner) in outputs


def test_batch_skips_and_lists_broken_slides(synthetic_dir, tmp_path):
    summary = tile_slides(synthetic_dir, tmp_path, progress=False)
    status = {r.name: r.status for r in summary.slides}
    assert status == {"nompp": "failed", "notaslide": "failed", "pyramid": "tiled", "truncated": "failed"}
    assert summary.tiles == 36 and len(summary.failed) == 3
    text = summary.render()
    assert "4: 1 tiled, 0 already done, 3 skipped" in text and "skipped files  3" in text
    for name in ("nompp.tif", "notaslide.svs", "truncated.tif"):
        assert any(str(synthetic_dir / name) in line for line in text.splitlines()), name
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["tiles"] == 36 and len(saved["slides"]) == 4
    with pytest.raises(DataError, match="data.strict=true"):
        tile_slides(synthetic_dir, tmp_path / "strict", strict=True, progress=False)


def test_resume_skips_done_and_detects_other_parameters(synthetic_dir, tmp_path):
    tile_slides(synthetic_dir, tmp_path, mpp=0.5, progress=False)  # nompp.tif gets the fallback MPP
    h5 = tmp_path / "patches" / "pyramid.h5"
    before = h5.stat().st_mtime_ns
    again = tile_slides(synthetic_dir, tmp_path, mpp=0.5, progress=False)
    assert {r.name: r.status for r in again.slides if r.status != "failed"} == {"nompp": "done", "pyramid": "done"}
    assert again.tiles == 36 + len(read_coords(tmp_path / "patches" / "nompp.h5")[0])
    assert h5.stat().st_mtime_ns == before
    # another fallback MPP matters to the slide that used it, not to the one with MPP metadata
    with pytest.raises(DataError, match=r"1 slide\(s\) made with other parameters \(e.g. nompp: mpp changed\)"):
        tile_slides(synthetic_dir, tmp_path, mpp=0.25, progress=False)
    with pytest.raises(DataError) as err:
        tile_slides(synthetic_dir, tmp_path, TilingParams(tile_px=128), mpp=0.5, progress=False)
    assert "tiling.tile_px" in str(err.value) and "overwrite=true" in str(err.value)
    redone = tile_slides(synthetic_dir, tmp_path, TilingParams(tile_px=128), mpp=0.5, overwrite=True, progress=False)
    assert {r.name: r.status for r in redone.slides if r.status != "failed"} == {"nompp": "tiled", "pyramid": "tiled"}
    assert coords_set(h5) == synthetic.expected_tiles(128)


def test_csv_list_with_per_slide_mpp(synthetic_dir, tmp_path):
    listing = tmp_path / "slides.csv"
    with open(listing, "w", newline="") as f:
        csv.writer(f).writerows([["path", "mpp"], ["nompp.tif", "0.25"], ["pyramid.tif", ""]])
    summary = tile_slides(synthetic_dir, tmp_path / "out", csv_path=listing, progress=False)
    assert [(r.name, r.status) for r in summary.slides] == [("nompp", "tiled"), ("pyramid", "tiled")]
    _, attrs = read_coords(tmp_path / "out" / "patches" / "nompp.h5")
    # 256 px at 0.5 um/px on a 0.25 um/px slide: 512 level-0 px
    assert (attrs["level0_mpp"], attrs["mpp_source"], attrs["patch_size_level0"]) == (0.25, "override", 512)


def test_parallel_workers_give_the_same_tiles(synthetic_dir, cmu_slide, tmp_path):
    slides = [synthetic_dir / "pyramid.tif", cmu_slide]
    tile_slides(slides, tmp_path / "one", workers=1, progress=False)
    summary = tile_slides(slides, tmp_path / "two", workers=2, progress=False)
    assert [r.status for r in summary.slides] == ["tiled", "tiled"]
    for name in ("pyramid", "CMU-1-Small-Region"):
        one, two = (read_coords(tmp_path / d / "patches" / f"{name}.h5")[0] for d in ("one", "two"))
        np.testing.assert_array_equal(one, two)


def test_duplicate_slide_names_are_refused(pyramid, tmp_path):
    other = tmp_path / "b" / "pyramid.tif"
    other.parent.mkdir()
    os.symlink(pyramid, other)
    with pytest.raises(DataError, match="both named 'pyramid'"):
        tile_slides([pyramid, other], tmp_path / "out", progress=False)


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.h5"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_segmentation_thumbnail_is_capped(pyramid):
    from domainfm.pathology.slide import open_slide
    from domainfm.pathology.tiling import _thumbnails

    with open_slide(pyramid) as s:
        thumb, seg = _thumbnails(s, 8.0, max_side=2048)
        assert seg.shape == (128, 192, 3) and thumb.shape == (683, 1024, 3)  # 8 um/px; overlay 1.5 um/px
        _, capped = _thumbnails(s, 8.0, max_side=96)  # 1536 um / 96 px = 16 um/px: memory bounded on huge slides
        assert capped.shape == (64, 96, 3)


def test_a_truncated_svs_is_called_truncated(cmu_slide, tmp_path):
    """The real Aperio slide cut after 300 kB: a TIFF OpenSlide cannot read, not 'another format to convert'."""
    cut = tmp_path / "cut.svs"
    cut.write_bytes(cmu_slide.read_bytes()[:300_000])
    summary = tile_slides(cut, tmp_path / "out", progress=False)
    (error,) = [r.error for r in summary.failed]
    assert error == (
        f"{cut}: truncated or corrupt slide (a TIFF whose structure OpenSlide cannot read); copy it again from the "
        "scanner or archive, or remove it"
    )


def test_outputs_of_a_slide_that_fails_now_are_moved_aside(synthetic_dir, tmp_path):
    """Rerun with overwrite=true where a slide now fails (its fallback MPP is gone): its earlier .h5, GeoJSON and
    overlay must not stay beside the new outputs, where they would be read as this run's tiles; they are kept."""
    tile_slides(synthetic_dir, tmp_path, mpp=0.5, progress=False)
    old = (tmp_path / "patches" / "nompp.h5").read_bytes()
    again = tile_slides(synthetic_dir, tmp_path, overwrite=True, progress=False)
    assert {r.name: r.status for r in again.slides}["nompp"] == "failed"
    assert sorted(p.name for p in (tmp_path / "patches").glob("*.h5")) == ["pyramid.h5"]
    assert (tmp_path / "stale" / "h5" / "nompp.h5").read_bytes() == old
    assert (tmp_path / "stale" / "overlay" / "nompp.png").is_file()
    assert f"stale outputs  1 failed slide(s) had earlier tiles, moved to {tmp_path / 'stale'}: nompp" in again.render()

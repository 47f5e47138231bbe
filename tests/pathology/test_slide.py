"""Opening and reading slides: the real Aperio slide, synthetic pyramids (levels, missing MPP, truncated) and plain
images through the tifffile/Pillow fallback."""

import numpy as np
import openslide
import pytest
from domainfm.errors import DataError
from domainfm.pathology import slide as slide_module
from domainfm.pathology.slide import open_slide
from PIL import Image


def test_real_aperio_slide_metadata(cmu_slide):
    with open_slide(cmu_slide) as s:
        assert s.backend == "openslide" and s.vendor == "aperio"
        assert s.dimensions == (2220, 2967) and s.level_count == 1
        assert s.mpp == 0.499 and s.mpp_source == "openslide.mpp-x"
        assert s.magnification == 20
        assert s.name == "CMU-1-Small-Region"


def test_read_at_half_micron_is_the_raw_level0_read(cmu_slide):
    # 0.5 / 0.499 is within the 1% tolerance: no resampling, the pixels are OpenSlide's own
    raw = np.asarray(openslide.OpenSlide(str(cmu_slide)).read_region((700, 1200), 0, (256, 256)).convert("RGB"))
    with open_slide(cmu_slide) as s:
        tile = s.read_region_at_mpp(700, 1200, 256, 0.5)
    assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
    np.testing.assert_array_equal(tile, raw)


def test_read_at_coarser_mpp_resamples(cmu_slide):
    # 1.0 / 0.499 = 2.004 level-0 px per output px: 128 px at 1 um/px span round(128 * 2.004) = 257 level-0 px
    raw = openslide.OpenSlide(str(cmu_slide)).read_region((700, 1200), 0, (257, 257)).convert("RGB")
    expected = np.asarray(raw.resize((128, 128), Image.Resampling.BOX), dtype=float)
    with open_slide(cmu_slide) as s:
        tile = s.read_region_at_mpp(700, 1200, 128, 1.0)
    assert tile.shape == (128, 128, 3)
    assert np.abs(tile - expected).mean() < 3.0


def test_pyramid_levels_and_best_level(pyramid):
    with open_slide(pyramid) as s:
        assert s.level_downsamples == (1.0, 4.0, 16.0)
        assert s.level_dimensions == ((3072, 2048), (768, 512), (192, 128))
        assert s.mpp == 0.5 and s.mpp_source == "openslide.mpp-x"
        assert [s.best_level(d) for d in (1.0, 2.0, 3.97, 3.9, 4.0, 15.0, 16.0, 100.0)] == [0, 0, 1, 0, 1, 1, 2, 2]


def test_pyramid_reads_from_the_right_level(pyramid):
    handle = openslide.OpenSlide(str(pyramid))
    with open_slide(pyramid) as s:
        # 2.0 um/px on a 0.5 um/px slide = downsample 4 = level 1 as stored
        tile = s.read_region_at_mpp(512, 256, 64, 2.0)
        np.testing.assert_array_equal(tile, np.asarray(handle.read_region((512, 256), 1, (64, 64)).convert("RGB")))
        # 1.0 um/px: level 0 read at 128 px and halved
        tile = s.read_region_at_mpp(512, 256, 64, 1.0)
        level0 = handle.read_region((512, 256), 0, (128, 128)).convert("RGB")
        expected = np.asarray(level0.resize((64, 64), Image.Resampling.BOX), dtype=float)
        assert np.abs(tile - expected).mean() < 3.0


def test_thumbnail_streams_in_blocks(pyramid, monkeypatch):
    with open_slide(pyramid) as s:
        whole = s.thumbnail(8.0)  # downsample 16 = level 2
        np.testing.assert_array_equal(
            whole, np.asarray(openslide.OpenSlide(str(pyramid)).read_region((0, 0), 2, (192, 128)).convert("RGB"))
        )
        resampled = s.thumbnail(6.0)
        monkeypatch.setattr(slide_module, "_BLOCK", 40)  # many small blocks instead of one read
        np.testing.assert_array_equal(s.thumbnail(8.0), whole)
        blocked = s.thumbnail(6.0)
    assert blocked.shape == resampled.shape == (171, 256, 3)
    assert np.abs(blocked.astype(float) - resampled).mean() < 2.0


def test_plain_png_needs_an_mpp(shared_data):
    png = shared_data / "pathology" / "TCGA-HE-7130_1000px.png"
    with open_slide(png) as s:
        assert s.backend == "image" and s.dimensions == (1000, 1000) and s.level_count == 1
        with pytest.raises(DataError, match="data.mpp="):
            _ = s.mpp
    with open_slide(png, mpp=0.25) as s:
        assert (s.mpp, s.mpp_source) == (0.25, "override")
        corner = s.read_region((990, 990), 0, 20)  # 10 px inside, 10 px beyond the edge: white there
        expected = np.asarray(Image.open(png).convert("RGB"))[990:, 990:]
        np.testing.assert_array_equal(corner[:10, :10], expected)
        assert (corner[10:] == 255).all() and (corner[:, 10:] == 255).all()


def test_72_dpi_tiff_is_not_an_mpp(shared_data):
    tif = next((shared_data / "pathology" / "kather2016_tiles").rglob("*.tif"))  # stripped TIFF, 72 dpi default
    with open_slide(tif) as s:
        assert s.backend == "image" and s.dimensions == (150, 150)
        with pytest.raises(DataError, match="no microns-per-pixel"):
            _ = s.mpp


def test_missing_mpp_on_a_pyramid(synthetic_dir):
    with open_slide(synthetic_dir / "nompp.tif") as s:
        assert s.backend == "openslide" and s.level_count == 3
        with pytest.raises(DataError) as err:
            _ = s.mpp
    assert str(synthetic_dir / "nompp.tif") in str(err.value) and "data.mpp=" in str(err.value)
    with open_slide(synthetic_dir / "nompp.tif", mpp=0.5) as s:
        assert s.mpp == 0.5 and s.magnification == 20


@pytest.mark.parametrize("name", ["truncated.tif", "notaslide.svs", "missing.svs"])
def test_broken_files_are_one_line_data_errors(synthetic_dir, name):
    path = synthetic_dir / name
    with pytest.raises(DataError) as err, open_slide(path) as s:
        s.thumbnail(8.0)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_unscanned_pixels_are_white_and_checked_only_where_possible(cmu_slide):
    with open_slide(cmu_slide) as s:
        reader = s._reader
        assert not reader.sparse  # no openslide.bounds-* properties: the scan is the whole rectangle
        assert not reader._maybe_transparent((0, 0), 0, (256, 256))
        assert reader._maybe_transparent((2000, 0), 0, (256, 256)) and reader._maybe_transparent((0, -1), 0, (8, 8))
        tile = s.read_region((2100, 2900), 0, 256)  # 120 columns and 67 rows inside the slide
        assert (tile[67:] == 255).all() and (tile[:, 120:] == 255).all() and (tile[:67, :120] < 250).any()


def test_rgb_array_is_pillows_rgb_conversion():
    # the one-pass pack the reader uses instead of convert("RGB") + asarray: same pixels, alpha dropped, rows first
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8), "RGBA")
    for image in (rgba, rgba.convert("RGB")):
        array = slide_module.rgb_array(image)
        assert array.shape == (5, 7, 3) and array.dtype == np.uint8 and not array.flags.writeable
        np.testing.assert_array_equal(array, np.asarray(image.convert("RGB")))
        np.testing.assert_array_equal(array, np.asarray(rgba)[..., :3])


def test_dicom_wsi_series_folder(tmp_path, caplog):
    """A DICOM WSI (synthetic: no DICOM slide in ../shared/data; one file per level, JPEG tiles) read through
    OpenSlide: levels, MPP from PixelSpacing, pixels; the series folder is one slide named after it, it tiles and
    streams, and the (fake) patient fields reach no output file and no log line."""
    from domainfm.pathology.datasets import SlideTileDataset
    from domainfm.pathology.tiling import TilingParams, find_slides, tile_slides

    from tests.pathology import synthetic
    from tests.pathology.dicom_wsi import FAKE_PATIENT, write_dicom_wsi

    image = synthetic.standard_image()
    level1 = np.asarray(Image.fromarray(image).reduce(4))
    first = write_dicom_wsi(tmp_path / "slides" / "CASE-7", [image, level1], mpp=0.25)
    with open_slide(first) as s:
        assert s.backend == "openslide" and s.vendor == "dicom" and s.name == "CASE-7"
        assert s.level_dimensions == ((3072, 2048), (768, 512)) and s.level_downsamples == (1.0, 4.0)
        assert s.mpp == 0.25 and s.mpp_source == "openslide.mpp-x" and s.magnification == 40
        tile = s.read_region_at_mpp(1000, 600, 256, 0.25)  # across JPEG tile borders (x = 1024, y = 768)
        assert np.abs(tile.astype(float) - image[600:856, 1000:1256]).mean() < 3
        coarse = s.read_region_at_mpp(1000, 600, 64, 1.0)  # downsample 4: level 1 as stored
        assert np.abs(coarse.astype(float) - level1[150:214, 250:314]).mean() < 3
    assert find_slides(tmp_path / "slides") == [first]
    summary = tile_slides(tmp_path / "slides", tmp_path / "tiles", TilingParams(target_mpp=0.5), progress=False)
    assert [r.status for r in summary.slides] == ["tiled"] and summary.tiles > 0
    ds = SlideTileDataset(tmp_path / "tiles", tmp_path / "slides")
    item = ds[len(ds) // 2]
    assert item["meta"]["slide"] == "CASE-7" and item["image"].shape == (3, 256, 256)
    outputs = [p for p in (tmp_path / "tiles").rglob("*") if p.is_file()]
    assert outputs and not any(v.encode() in p.read_bytes() for p in outputs for v in FAKE_PATIENT)
    assert not any(v in caplog.text for v in FAKE_PATIENT)


def test_dicom_wsi_through_wsidicom_when_openslide_refuses(tmp_path, monkeypatch, caplog):
    """wsidicom reads the series with OpenSlide's contract (level-0 locations, white outside the image): the same
    levels, MPP and pixels as OpenSlide on a series both open; when OpenSlide refuses a series (forced here: no
    file that OpenSlide 4.0.1 refuses and wsidicom reads could be built, see docs/pathology.md) the slide tiles and
    streams through wsidicom; the LABEL instance is never opened and the fake patient reaches no output or log."""
    import wsidicom
    from domainfm.pathology import slide as slide_module
    from domainfm.pathology.datasets import SlideTileDataset
    from domainfm.pathology.tiling import TilingParams, tile_slides

    from tests.pathology import synthetic
    from tests.pathology.dicom_wsi import FAKE_PATIENT, write_dicom_wsi

    image = synthetic.standard_image()
    level1 = np.asarray(Image.fromarray(image).reduce(4))
    first = write_dicom_wsi(tmp_path / "slides" / "CASE-9", [image, level1], mpp=0.25, label=True)
    reference = open_slide(first)
    opened = []
    real_open = wsidicom.WsiDicom.open
    monkeypatch.setattr(wsidicom.WsiDicom, "open", lambda files, **kw: opened.extend(files) or real_open(files, **kw))
    reader = slide_module._WsiDicomReader(first)
    assert sorted(p.name for p in opened) == ["level0.dcm", "level1.dcm"]  # not level2.dcm, the LABEL
    assert reader.level_dimensions == reference.level_dimensions and reader.level_downsamples == (1.0, 4.0)
    assert reader.found_mpp == pytest.approx(0.25)
    for loc, level, size in [((1000, 600), 0, (300, 200)), ((1000, 600), 1, (64, 48)), ((3000, 2000), 0, (100, 90))]:
        np.testing.assert_array_equal(reader.read(loc, level, size), reference._reader.read(loc, level, size))

    def refuse(path):
        raise slide_module.openslide.OpenSlideUnsupportedFormatError("Couldn't get image flavor")

    monkeypatch.setattr(slide_module, "_OpenSlideReader", refuse)
    with open_slide(first) as s:
        assert s.backend == "wsidicom" and s.mpp == pytest.approx(0.25) and s.name == "CASE-9"
    summary = tile_slides(
        tmp_path / "slides", tmp_path / "tiles", TilingParams(target_mpp=0.5), workers=1, progress=False
    )
    assert [r.status for r in summary.slides] == ["tiled"] and summary.tiles > 0
    item = SlideTileDataset(tmp_path / "tiles", tmp_path / "slides")[0]
    assert item["image"].shape == (3, 256, 256)
    outputs = [p for p in (tmp_path / "tiles").rglob("*") if p.is_file()]
    assert not any(v.encode() in p.read_bytes() for p in outputs for v in FAKE_PATIENT)
    assert not any(v in caplog.text for v in FAKE_PATIENT)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.dcm").write_bytes(b"DICM but not really")
    with pytest.raises(DataError, match="neither OpenSlide .* nor wsidicom"):
        open_slide(tmp_path / "bad" / "x.dcm")

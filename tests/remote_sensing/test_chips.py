"""Remote-sensing reading and chips on real files from ../shared/data/remote_sensing: the Sentinel-2 L2A tile (12
band COGs at 100/200/600 m + SCL + STAC item), the six BigEarthNet patches (per-band files, no SCL) and the Landsat-7
RGB GeoTIFF with a nodata border. Misaligned and truncated rasters are made from them in a temporary folder."""

import csv
import json
import shutil

import numpy as np
import pytest
import rasterio
from domainfm.errors import ConfigError, DataError
from domainfm.remote_sensing.bands import SCL_INVALID
from domainfm.remote_sensing.chips import ChipParams, chip_scenes
from domainfm.remote_sensing.datasets import ChipDataset
from domainfm.remote_sensing.scenes import SceneReader, find_scenes
from domainfm.remote_sensing.stats import band_statistics

S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


@pytest.fixture(scope="module")
def rs(shared_data):
    return shared_data / "remote_sensing"


def test_scenes_are_found_in_every_layout_with_bands_in_sentinel2_order(rs):
    scenes = {s.name: s for s in find_scenes(rs)}
    assert len(scenes) == 8  # the S2 tile (STAC item), 6 BigEarthNet patches, the Landsat GeoTIFF; TCI is not a scene
    tile = scenes["S2A_29RKH_20200219_0_L2A"]
    assert tile.band_names == S2_BANDS and tile.mask.endswith("SCL.tif")
    assert [b.wavelength_nm for b in tile.bands][:4] == [443.0, 490.0, 560.0, 665.0]  # from the STAC eo:bands
    assert tile.scales["B02"] == 0.0001  # STAC raster:bands scale, recorded
    patch = scenes["S2A_MSIL2A_20170613T101031_87_48"]
    assert patch.band_names == S2_BANDS and patch.mask is None and patch.bands[8].path.endswith("_B8A.tif")
    assert scenes["landsat7_RGB.byte"].band_names == ["band_1", "band_2", "band_3"]


def test_bands_at_three_resolutions_are_read_on_the_finest_grid(rs):
    tile = find_scenes(rs / "sentinel2_l2a_29RKH")[0]
    with SceneReader(tile) as reader:
        assert (reader.grid.width, reader.grid.height, reader.grid.gsd) == (1098, 1098, 100.0)
        chip = reader.read(64, 128, 64)
        scl = reader.read_mask()
    src = {b.name: rasterio.open(b.path).read(1).astype(np.float32) for b in tile.bands}
    np.testing.assert_array_equal(chip[1], src["B02"][64:128, 128:192])  # native 100 m: the pixels themselves
    # 200 m and 600 m bands, bilinear to 100 m: block means stay those of the source pixels they cover
    b05 = chip[4].reshape(32, 2, 32, 2).mean((1, 3))
    assert np.abs(b05 - src["B05"][32:64, 64:96]).mean() < 0.02 * src["B05"].mean()
    b01 = chip[0][:60, :60].reshape(10, 6, 10, 6).mean((1, 3))  # rows 64.. at 600 m: 64/6 is not whole, compare
    assert abs(b01.mean() - src["B01"][11:21, 21:31].mean()) < 0.03 * src["B01"].mean()
    scl_src = rasterio.open(tile.mask).read(1)
    np.testing.assert_array_equal(scl, np.repeat(np.repeat(scl_src, 2, 0), 2, 1))  # the mask: nearest, exact


def test_chips_keep_windows_by_their_scl_validity(rs, tmp_path):
    summary = chip_scenes(rs / "sentinel2_l2a_29RKH", tmp_path, ChipParams(size=64, max_invalid=0.05), progress=False)
    assert summary.scenes[0].candidates == 17 * 17 and summary.chips == summary.scenes[0].chips
    scl = np.repeat(np.repeat(rasterio.open(rs / "sentinel2_l2a_29RKH" / "SCL.tif").read(1), 2, 0), 2, 1)
    expected = []
    for r in range(0, 1098 - 63, 64):
        for c in range(0, 1098 - 63, 64):
            window = scl[r : r + 64, c : c + 64]
            valid = 1 - np.isin(window, SCL_INVALID).mean()
            if valid >= 0.95:
                classes = np.bincount(window[~np.isin(window, SCL_INVALID)], minlength=12)
                expected.append((r, c, round(valid, 4), int(classes.argmax())))
    with open(tmp_path / "chips.csv", newline="") as f:
        rows = [(int(x["row"]), int(x["col"]), float(x["valid"]), int(x["scl_class"])) for x in csv.DictReader(f)]
    assert rows == expected and 0 < len(rows) < 289  # the cirrus and cloud windows are dropped
    info = json.loads((tmp_path / "scenes" / "S2A_29RKH_20200219_0_L2A.json").read_text())
    assert info["grid"]["crs"] == "EPSG:32629" and info["chip_px"] == 64


def test_size_in_metres_and_a_coarser_grid(rs, tmp_path):
    summary = chip_scenes(rs / "sentinel2_l2a_29RKH", tmp_path, ChipParams(size_m=6400, gsd=200), progress=False)
    info = json.loads((tmp_path / "scenes" / "S2A_29RKH_20200219_0_L2A.json").read_text())
    assert info["grid"]["width"] == 549 and info["chip_px"] == 32 and summary.scenes[0].candidates == 17 * 17


def test_nodata_border_drops_chips_without_scl(rs, tmp_path):
    chip_scenes(rs / "landsat7_RGB.byte.tif", tmp_path, ChipParams(size=64, max_invalid=0.0), progress=False)
    band = rasterio.open(rs / "landsat7_RGB.byte.tif").read(1)
    origins = [(r, c) for r in range(0, 718 - 63, 64) for c in range(0, 791 - 63, 64)]
    keep = [(r, c) for r, c in origins if (band[r : r + 64, c : c + 64] != 0).all()]
    with open(tmp_path / "chips.csv", newline="") as f:
        assert [(int(x["row"]), int(x["col"])) for x in csv.DictReader(f)] == keep
    assert 0 < len(keep) < 11 * 12


def test_unreadable_scenes_are_skipped_named_and_the_rest_resumes(rs, tmp_path):
    archive = tmp_path / "archive"
    (archive / "a").mkdir(parents=True)
    (archive / "b").mkdir()
    shutil.copy(rs / "landsat7_RGB.byte.tif", archive / "a" / "good.tif")
    data = (rs / "landsat7_RGB.byte.tif").read_bytes()
    (archive / "b" / "broken.tif").write_bytes(data[: len(data) // 50])
    out = tmp_path / "chips"
    summary = chip_scenes(archive, out, ChipParams(size=64), workers=2, progress=False)
    assert [(s.name, s.status) for s in summary.scenes] == [("good", "chipped"), ("broken", "failed")]
    assert "broken.tif" in summary.failed[0].error and "skipped broken" in summary.render()
    first = (out / "chips.csv").read_text()
    again = chip_scenes(archive, out, ChipParams(size=64), workers=1, progress=False)
    assert [s.status for s in again.scenes] == ["done", "failed"] and (out / "chips.csv").read_text() == first
    with pytest.raises(DataError, match=r"made with other parameters \(e.g. good: size changed\)"):
        chip_scenes(archive, out, ChipParams(size=32), progress=False)
    assert chip_scenes(archive, out, ChipParams(size=32), overwrite=True, progress=False).scenes[0].status == "chipped"
    with pytest.raises(DataError, match="data.strict=true"):
        chip_scenes(archive, tmp_path / "strict", ChipParams(size=64), strict=True, workers=1, progress=False)


def test_bands_with_different_extents_are_one_line_errors(rs, tmp_path):
    folder = tmp_path / "scene"
    folder.mkdir()
    shutil.copy(rs / "sentinel2_l2a_29RKH" / "B02.tif", folder / "B02.tif")
    with rasterio.open(rs / "sentinel2_l2a_29RKH" / "B03.tif") as src:
        profile = {**src.profile, "width": 500, "height": 500}
        with rasterio.open(folder / "B03.tif", "w", **profile) as dst:
            dst.write(src.read(1)[:500, :500], 1)
    (scene,) = find_scenes(folder)
    with pytest.raises(
        DataError,
        match=r"B03.tif covers \(199980, 2750020, 249980, 2800020\).*B02.tif .*: bands of one scene must cover",
    ):
        SceneReader(scene)


def test_chip_dataset_reads_selected_bands_in_the_order_asked(rs, tmp_path):
    chip_scenes(rs, tmp_path, ChipParams(size=32), progress=False)
    with pytest.raises(DataError, match=r"landsat7_RGB.byte has no band B04, B02 .*select bands every scene has"):
        ChipDataset(tmp_path, bands=["B04", "B02"])  # the Landsat scene has band_1..3
    ds = ChipDataset(tmp_path, bands=["B04", "B03", "B02"], labels=True)  # only S2 chips carry an SCL class
    sample = ds[0]
    assert sample["image"].shape == (3, 32, 32) and sample["label"] >= 0 and ds.in_chans == 3
    tile = find_scenes(rs / "sentinel2_l2a_29RKH")[0]
    with SceneReader(tile, bands=["B04", "B03", "B02"]) as reader:
        np.testing.assert_array_equal(
            sample["image"].numpy(), reader.read(sample["meta"]["row"], sample["meta"]["col"], 32)
        )
    with open(tmp_path / "chips.csv", newline="") as f:
        n_landsat = sum(1 for r in csv.DictReader(f) if r["scene"] == "landsat7_RGB.byte")
    assert len(ChipDataset(tmp_path, scenes=["landsat7_RGB.byte"])) == n_landsat


def test_band_statistics_match_numpy_and_skip_nodata():
    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 5000, (2, 8, 8)).astype(np.float32) for _ in range(5)]
    chips[0][1, :4] = 0  # nodata in band 2
    stats = band_statistics(chips, ["a", "b"], nodata=0, sample_per_chip=1000)["bands"]
    for c, name in enumerate(["a", "b"]):
        values = np.concatenate([x[c].ravel() for x in chips]).astype(np.float64)
        values = values[values != 0]
        assert stats[name]["pixels"] == values.size
        np.testing.assert_allclose(stats[name]["mean"], values.mean(), rtol=1e-9)
        np.testing.assert_allclose(stats[name]["std"], values.std(), rtol=1e-9)
        np.testing.assert_allclose([stats[name]["p2"], stats[name]["p98"]], np.percentile(values, [2, 98]))


def test_the_chips_command_writes_the_index_and_band_stats(rs, tmp_path):
    from domainfm.cli import compose_config
    from domainfm.remote_sensing.commands import chips

    out = chips.run(compose_config("chips", [f"data.root={rs / 'bigearthnet_s2_examples'}", f"out={tmp_path}",
                                             "chips.size=40", "progress=false"]))  # fmt: skip
    assert out["chips"] == 6 * 9  # 120 px patches at 10 m: 3 x 3 chips of 40 px each
    (group,) = json.loads((tmp_path / "band_stats.json").read_text())["groups"]
    assert group["names"] == S2_BANDS and group["chips"] == 54 and len(group["scenes"]) == 6
    assert 0 < group["bands"]["B04"]["p2"] < group["bands"]["B04"]["mean"] < group["bands"]["B04"]["p98"]


def test_random_chips_are_uniform_reproducible_per_scene_and_filtered(rs, tmp_path):
    tile = rs / "sentinel2_l2a_29RKH"
    params = ChipParams(size=32, mode="random", count=400, seed=3, max_invalid=0.05)
    summary = chip_scenes(tile, tmp_path / "a", params, progress=False)
    assert summary.scenes[0].candidates == 400 and 0 < summary.chips < 400  # cloudy draws are dropped
    with open(tmp_path / "a" / "chips.csv", newline="") as f:
        rows = [(int(x["row"]), int(x["col"])) for x in csv.DictReader(f)]
    assert all(0 <= r <= 1098 - 32 and 0 <= c <= 1098 - 32 for r, c in rows)
    assert len(set(rows)) > 0.95 * len(rows) and np.std([r for r, _ in rows]) > 250  # spread over the tile
    scl = np.repeat(np.repeat(rasterio.open(tile / "SCL.tif").read(1), 2, 0), 2, 1)
    for r, c in rows[:50]:  # every kept draw passes the same validity rule as grid chips
        assert np.isin(scl[r : r + 32, c : c + 32], SCL_INVALID).mean() <= 0.05
    again = chip_scenes(tile, tmp_path / "b", params, progress=False)
    assert (tmp_path / "b" / "chips.csv").read_text() == (tmp_path / "a" / "chips.csv").read_text()
    assert again.chips == summary.chips
    other = chip_scenes(tile, tmp_path / "c", ChipParams(size=32, mode="random", count=400, seed=4), progress=False)
    assert (tmp_path / "c" / "chips.csv").read_text() != (tmp_path / "a" / "chips.csv").read_text()
    assert other.scenes[0].candidates == 400
    with pytest.raises(ConfigError, match="chips.mode=random needs chips.count"):
        chip_scenes(tile, tmp_path / "d", ChipParams(mode="random"), progress=False)


@pytest.mark.parametrize("fmt", ["npy", "tif"])
def test_chip_copies_hold_the_same_pixels_and_the_tif_is_georeferenced(rs, tmp_path, fmt):
    tile = rs / "sentinel2_l2a_29RKH"
    chip_scenes(tile, tmp_path, ChipParams(size=64, max_invalid=0.05, write=fmt), progress=False)
    ds = ChipDataset(tmp_path)
    files = sorted((tmp_path / "files" / "S2A_29RKH_20200219_0_L2A").glob(f"*.{fmt}"))
    assert len(files) == len(ds) and not list((tmp_path / "files").rglob(".*.tmp"))
    sample = ds[3]
    path = tmp_path / "files" / sample["meta"]["scene"] / f"{sample['meta']['row']}_{sample['meta']['col']}.{fmt}"
    if fmt == "npy":
        np.testing.assert_array_equal(np.load(path), sample["image"].numpy())
        return
    with rasterio.open(path) as f, rasterio.open(tile / "B02.tif") as b02:
        np.testing.assert_array_equal(f.read(), sample["image"].numpy())
        assert f.crs == b02.crs and list(f.descriptions) == S2_BANDS
        row, col = sample["meta"]["row"], sample["meta"]["col"]
        assert f.transform == b02.transform @ rasterio.Affine.translation(col, row)  # the chip's own footprint


def test_landsat_band_files_with_qa_pixel_bits_mask_fill_and_clouds(rs, tmp_path):
    """Landsat 8/9 Collection 2 names on the pixels of the real Landsat GeoTIFF (synthetic: no Landsat 8/9 sample
    exists); QA_PIXEL made here: fill (bit 0) on the file's nodata border, cloud (bit 3) on a block, clear (bit 6)."""
    prefix = "LC09_L2SP_014032_20230101_20230103_02_T1"
    with rasterio.open(rs / "landsat7_RGB.byte.tif") as src:
        rgb, profile = src.read().astype(np.uint16), {**src.profile, "count": 1, "dtype": "uint16", "nodata": None}
    for i, band in enumerate(["SR_B4", "SR_B3", "SR_B2"]):
        with rasterio.open(tmp_path / f"{prefix}_{band}.TIF", "w", **profile) as dst:
            dst.write(rgb[i] * 100 + 7273, 1)
    qa = np.where(rgb[0] == 0, 1, 1 << 6).astype(np.uint16)
    qa[100:300, 200:400] |= 1 << 3  # a cloud
    with rasterio.open(tmp_path / f"{prefix}_QA_PIXEL.TIF", "w", **profile) as dst:
        dst.write(qa, 1)
    (scene,) = find_scenes(tmp_path)
    assert scene.band_names == ["SR_B2", "SR_B3", "SR_B4"] and scene.mask_kind == "landsat_qa"
    assert [b.wavelength_nm for b in scene.bands] == [482, 561.5, 654.5] and scene.scales["SR_B2"] == 2.75e-5
    chip_scenes(tmp_path, tmp_path / "chips", ChipParams(size=64, max_invalid=0.0), progress=False)
    bad = (qa & 0b11111) != 0
    origins = [(r, c) for r in range(0, 718 - 63, 64) for c in range(0, 791 - 63, 64)]
    keep = [(r, c) for r, c in origins if not bad[r : r + 64, c : c + 64].any()]
    with open(tmp_path / "chips" / "chips.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(x["row"]), int(x["col"])) for x in rows] == keep and {x["scl_class"] for x in rows} == {"-1"}
    assert 0 < len(keep) < len([o for o in origins if not (qa[o[0] : o[0] + 64, o[1] : o[1] + 64] & 1).any()])
    # the clouds count only when their bit is asked for
    chip_scenes(tmp_path, tmp_path / "c2", ChipParams(size=64, max_invalid=0.0, qa_invalid_bits=[0]), progress=False)
    with open(tmp_path / "c2" / "chips.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) > len(keep)
    # the dataset reads on the grid the index was made on (this file's pixels are not square: 300.038 x 300.042 m)
    ds = ChipDataset(tmp_path / "chips", normalization="scale", offset=-7272.73)
    r, c = int(rows[0]["row"]), int(rows[0]["col"])
    expected = (rgb[2][r : r + 64, c : c + 64] * 100 + 7273 - 7272.73) * 2.75e-5  # SR_B2 reflectance, USGS formula
    np.testing.assert_allclose(ds[0]["image"][0].numpy(), expected, rtol=1e-5, atol=1e-6)

"""The multispectral demo (`domainfm demo remote_sensing method=mae_s2`) on the bundled Sentinel-2 crop: the bundle is
a pixel-exact, georeferenced window of the real tile in ../shared/data; the demo goes from the band files to chips,
an MAE export that carries its 12 bands and normalisation, a refused band order, and probe + finetune rows for the
pretrained ViT and its random init on the same spatial splits (2 steps each: the pipeline, not the learning)."""

import json

import numpy as np
import rasterio
from domainfm.sample_data import sample_path
from rasterio.windows import from_bounds

from tests.conftest import SHARED_DATA

CROP = sample_path("remote_sensing/sentinel2_29RKH_crop")


def test_the_bundled_crop_is_a_window_of_the_real_tile():
    names = sorted(p.stem for p in CROP.glob("*.tif"))
    assert names == sorted(["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL"])
    for name in ("B02", "B05", "B01", "SCL"):
        with (
            rasterio.open(CROP / f"{name}.tif") as crop,
            rasterio.open(SHARED_DATA / "remote_sensing" / "sentinel2_l2a_29RKH" / f"{name}.tif") as tile,
        ):
            assert crop.crs == tile.crs and crop.res == tile.res
            window = from_bounds(*crop.bounds, transform=tile.transform)
            np.testing.assert_array_equal(crop.read(1), tile.read(1, window=window.round_offsets().round_lengths()))
            assert crop.bounds.right == tile.bounds.right and crop.bounds.top == tile.bounds.top  # the NE corner


def test_the_multispectral_demo_goes_from_band_files_to_a_finetuned_result(tmp_path, capsys):
    from domainfm.remote_sensing import demo

    result = demo.main(out=str(tmp_path), steps="2", method="mae_s2", finetune_steps="2")
    text = capsys.readouterr().out
    chips = tmp_path / "chips"
    rows = (chips / "chips.csv").read_text().splitlines()
    assert len(rows) - 1 == (252 // 16) ** 2  # every 16 px window of the 252 px grid (none masked: max_invalid 1)
    stats = json.loads((chips / "band_stats.json").read_text())
    assert stats["groups"][0]["names"][:3] == ["B01", "B02", "B03"] and len(stats["groups"][0]["names"]) == 12
    config = json.loads((tmp_path / "mae_s2_tiny" / "export" / "config.json").read_text())
    recorded = config["domainfm"]
    assert recorded["bands"][:4] == ["B01", "B02", "B03", "B04"] and len(recorded["bands"]) == 12
    assert "refused: input has bands B12,B11,B09" in text and "these weights expect 12 bands in this order" in text
    for part in ("probe", "finetune"):
        assert list(result[part]) == ["mae_s2_tiny", "random_init"]
    assert [r["protocol"] for r in result["probe"]["mae_s2_tiny"]] == ["knn", "logreg"]
    tuned = json.loads((tmp_path / "finetune" / "mae_s2_tiny" / "export" / "config.json").read_text())
    assert tuned["domainfm"]["bands"] == recorded["bands"]  # the finetuned export keeps the bands
    assert (tmp_path / "evaluate" / "splits.csv").read_text() == (tmp_path / "finetune" / "splits.csv").read_text()
    assert text.count("random init") >= 2 and "demo finished" in text

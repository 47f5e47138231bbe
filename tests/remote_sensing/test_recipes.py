"""Remote-sensing recipes end to end on the real Sentinel-2 L2A tile: chips -> `remote_sensing/mae_s2_tiny` and
`dinov2_s2_tiny` pretraining -> export with bands and normalisation -> `domainfm evaluate data.chips=...` (spatial
splits, labels = majority SCL class); what the paper-scale recipes take from SSL4EO-S12 and DINOv2."""

import json

import numpy as np
import pytest
import torch
from domainfm.commands import evaluate
from domainfm.errors import DataError
from domainfm.evaluation.features import load_features
from domainfm.remote_sensing.chips import ChipParams, chip_scenes
from domainfm.remote_sensing.commands.evaluate_chips import labeled_chips
from domainfm.remote_sensing.datasets import ChipDataset
from domainfm.remote_sensing.model import SpectralBackbone
from domainfm.remote_sensing.stats import archive_statistics
from hydra.utils import instantiate

from tests.conftest import compose, pretrain_in_process

S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
SMALL = ["+backbone.depth=2", "data.batch_size=8", "data.num_workers=0", "trainer.progress=false"]
SMALL += ["trainer.tensorboard=false", "trainer.max_steps=2"]


@pytest.fixture(scope="module")
def chips(shared_data, tmp_path_factory):
    """16 px chips of the whole tile, cloudy ones kept (SCL classes 8-10 are labels, not invalid)."""
    out = tmp_path_factory.mktemp("chips")
    tile = shared_data / "remote_sensing" / "sentinel2_l2a_29RKH"
    chip_scenes(tile, out, ChipParams(size=16, max_invalid=1.0, invalid_classes=[0]), progress=False)
    (out / "band_stats.json").write_text(json.dumps(archive_statistics(out, max_chips=300, progress=False)))
    return out


@pytest.fixture(scope="module")
def mae_run(chips, tmp_path_factory):
    run = tmp_path_factory.mktemp("mae")
    out = pretrain_in_process(["recipe=remote_sensing/mae_s2_tiny", f"data.root={chips}", f"run_dir={run}", *SMALL])
    assert out["steps"] == 2 and out["skipped_files"] == []
    return run


def test_mae_s2_tiny_exports_bands_normalisation_and_a_true_colour_report(mae_run):
    info = json.loads((mae_run / "export" / "config.json").read_text())["domainfm"]
    assert info["bands"] == S2_BANDS and info["normalization"]["convention"] == "scale"
    assert info["normalization"]["scale"] == 0.0001  # the STAC item's raster:bands scale
    assert (info["gsd_m"], info["chip_px"], info["input_gsd_m"]) == (100.0, 16, 50.0)  # 16 px chips seen at 32 px
    assert info["display_channels"] == [3, 2, 1] and (mae_run / "report" / "reconstructions.png").is_file()
    model = SpectralBackbone.from_pretrained(str(mae_run))
    assert model.bands == S2_BANDS and model.backbone.patch_embed.proj.in_channels == 12
    x = torch.rand(2, 12, 32, 32) * 3000
    assert model(x, bands=S2_BANDS).shape == (2, 192)
    with pytest.raises(DataError, match="these weights expect 12 bands in this order: B01,B02"):
        model(x[:, :3])


def test_evaluate_on_chips_uses_the_weights_normalisation_and_spatial_splits(mae_run, chips, tmp_path):
    data, rows = labeled_chips(chips, min_class=10, block_px=128)
    assert data.classes == ["not_vegetated", "thin_cirrus"]  # the clouds (7 and 9 chips) fall under min_class
    groups_per_split = {s: set(data.groups[data.splits == s]) for s in ("train", "val", "test")}
    assert not (groups_per_split["train"] & groups_per_split["test"])  # no 128 px block in two splits
    assert (data.labels == 1).sum() == (ChipDataset(chips, labels=True).classes() == 10).sum()
    run_dir = tmp_path / "eval"
    overrides = [f"data.chips={chips}", f"backbone={mae_run}", f"run_dir={run_dir}", "protocol=knn"]
    overrides += ["data.block_px=128", "progress=false", "report.plots=false", "data.num_workers=0"]
    results = evaluate.run(compose("evaluate", overrides))
    (knn,) = results[mae_run.name]
    assert knn["n"] == (data.splits == "test").sum() and 0.0 <= knn["metrics"]["balanced_accuracy"] <= 1.0
    summary = (run_dir / "summary.md").read_text()
    assert f"data.chips={chips}" in summary and "chips, 2 classes" in summary
    # the features are those of the weights' own normalisation; another one changes them
    own = load_features(run_dir / mae_run.name / "features.h5").features
    forced = evaluate.run(compose("evaluate", [*overrides, "data.normalization=percentile"]))
    other = load_features(run_dir / mae_run.name / "features.h5").features
    assert forced[mae_run.name][0]["n"] == knn["n"] and not np.allclose(own, other)
    assert len(rows) == len(data)


def test_evaluate_on_chips_needs_recorded_normalisation_and_two_classes(chips, tmp_path):
    from domainfm.backbones.vit import create_vit
    from domainfm.engine.export import export_backbone

    plain = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=12, depth=1)
    export_backbone(plain, tmp_path / "plain", {"img_size": 32, "mean": [0.0] * 12, "std": [1.0] * 12})
    overrides = [f"data.chips={chips}", f"backbone={tmp_path / 'plain'}", f"run_dir={tmp_path / 'e'}"]
    overrides += ["protocol=knn", "progress=false", "report.plots=false", "data.num_workers=0"]
    with pytest.raises(DataError, match="records no band normalisation"):
        evaluate.run(compose("evaluate", overrides))
    assert evaluate.run(compose("evaluate", [*overrides, "data.normalization=meanstd"]))["plain"][0]["n"] > 0
    with pytest.raises(
        DataError,
        match=r"0 SCL class\(es\) with at least 5000 chips \({5: 4450, 8: 7, 9: 9, 10: 158}\); a labeled set needs two "
        r".*chips.invalid_classes=\[0\]",
    ):
        labeled_chips(chips, min_class=5000)


def test_dinov2_s2_tiny_trains_on_chips_with_spectral_views(chips, tmp_path):
    run = tmp_path / "dino"
    out = pretrain_in_process(
        [
            "recipe=remote_sensing/dinov2_s2_tiny",
            f"data.root={chips}",
            f"run_dir={run}",
            *SMALL,
            "method.out_dim=256",
            "method.hidden_dim=64",
        ]  # fmt: skip
    )
    assert out["steps"] == 2 and np.isfinite(out["final_loss"])
    assert json.loads((run / "export" / "config.json").read_text())["domainfm"]["bands"] == S2_BANDS


def test_paper_scale_recipes_take_ssl4eo_and_dinov2_values(chips):
    mae = compose("pretrain", ["recipe=remote_sensing/mae_s2", f"data.root={chips}"])
    assert (mae.backbone.name, mae.preprocess.img_size, mae.preprocess.in_chans) == ("vit_small_patch16_224", 224, 12)
    assert (mae.method.mask_ratio, mae.method.norm_pix_loss, mae.method.decoder_dim) == (0.7, True, 512)
    assert (mae.trainer.lr, mae.trainer.lr_scaling, mae.trainer.betas) == (1.5e-4, "linear", [0.9, 0.95])
    assert mae.preprocess.normalize == "scale" and list(mae.preprocess.mean) == [0.0] * 12
    dino = compose("pretrain", ["recipe=remote_sensing/dinov2_s2", f"data.root={chips}"])
    t = dino.data.transform
    assert (t.global_size, t.local_size, t.n_local, list(t.global_scale), list(t.local_scale)) == (
        224, 96, 8, [0.4, 1.0], [0.05, 0.4])  # fmt: skip
    assert t.photometric._target_.endswith("SpectralJitter") and list(t.global_solarize) == [0.0, 0.0]
    assert (dino.method.out_dim, dino.backbone.patch_size, dino.trainer.clip_grad) == (65536, 16, 3.0)
    l1c = compose(
        "pretrain",
        ["recipe=remote_sensing/mae_s2", f"data.root={chips}", f"preprocess.bands=[{','.join(S2_BANDS)},B10]"],
    )
    assert l1c.preprocess.in_chans == 13 and l1c.backbone.in_chans == 13  # a 13-band L1C archive: name the bands
    view = instantiate(compose("pretrain", ["recipe=remote_sensing/mae_s2_tiny", f"data.root={chips}"]).data.transform)
    sample = view({"image": torch.randn(12, 16, 16), "meta": {}})
    assert sample["image"].shape == (12, 32, 32) and sample["mask"].shape == (16,)


def test_finetune_on_chips_keeps_bands_normalisation_and_spatial_splits(mae_run, chips, tmp_path):
    from domainfm.commands import finetune

    run_dir = tmp_path / "ft"
    overrides = [f"data.chips={chips}", f"backbone={mae_run}", f"run_dir={run_dir}", "data.block_px=128"]
    overrides += ["trainer.max_steps=3", "trainer.eval_every=3", "trainer.checkpoint_every=3", "data.batch_size=8"]
    overrides += ["data.num_workers=0", "trainer.progress=false", "trainer.tensorboard=false", "report.plots=false"]
    overrides += ["metrics.bootstrap=50", "finetune.vflip=0.5"]
    results = finetune.run(compose("finetune", overrides))
    data, _ = labeled_chips(chips, min_class=10, block_px=128)
    (result,) = results[mae_run.name]
    assert result["protocol"] == "finetune" and result["n"] == (data.splits == "test").sum()
    assert result["details"]["steps"] == 3 and 0.0 <= result["metrics"]["balanced_accuracy"] <= 1.0
    summary = (run_dir / "summary.md").read_text()
    assert f"data.chips={chips}" in summary and "chips, 2 classes" in summary
    splits = (run_dir / "splits.csv").read_text().splitlines()
    assert len(splits) == len(data) + 1  # the same spatial splits as `domainfm evaluate data.chips=`
    # the finetuned export reads chips as the pretrained one did: same bands, same normalisation
    before = json.loads((mae_run / "export" / "config.json").read_text())["domainfm"]
    after = json.loads((run_dir / "export" / "config.json").read_text())["domainfm"]
    assert after["bands"] == S2_BANDS and after["normalization"] == before["normalization"]
    tuned, pretrained = SpectralBackbone.from_pretrained(str(run_dir)), SpectralBackbone.from_pretrained(str(mae_run))
    x = torch.rand(2, 12, 32, 32) * 3000
    assert tuned(x).shape == (2, 192) and not torch.allclose(tuned(x), pretrained(x))
    # training views are multispectral: 12 bands in, crop + flips + 90-degree turns, no RGB jitter
    from domainfm.remote_sensing.commands.finetune_chips import training_view

    view = training_view(compose("finetune", overrides).finetune, 32, [0.0] * 12, [1.0] * 12)
    assert view(torch.rand(12, 16, 16)).shape == (12, 32, 32) and view.rot90 and view.vflip == 0.5

"""Band normalisation that travels with the weights, and multispectral-safe augmentation, on chips of the real
Sentinel-2 L2A tile (../shared/data/remote_sensing/sentinel2_l2a_29RKH)."""

import json

import numpy as np
import pytest
import torch
from domainfm.backbones.vit import create_vit
from domainfm.data.transforms import RGBPhotometric
from domainfm.engine.export import export_backbone
from domainfm.errors import ConfigError, DataError
from domainfm.remote_sensing.augment import SpectralJitter, SpectralView
from domainfm.remote_sensing.chips import ChipParams, chip_scenes
from domainfm.remote_sensing.datasets import ChipDataset
from domainfm.remote_sensing.model import SpectralBackbone, normalization_of
from domainfm.remote_sensing.normalization import BandNormalization, select_bands

S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


@pytest.fixture(scope="module")
def chips(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("chips")
    chip_scenes(shared_data / "remote_sensing" / "sentinel2_l2a_29RKH", out, ChipParams(size=32), progress=False)
    from domainfm.remote_sensing.stats import archive_statistics

    (out / "band_stats.json").write_text(json.dumps(archive_statistics(out, max_chips=200, progress=False)))
    return out


def test_each_convention_maps_file_values_as_its_formula(chips):
    raw = ChipDataset(chips, bands=["B04", "B08"])
    stats = json.loads((chips / "band_stats.json").read_text())["groups"][0]["bands"]
    x = raw[5]["image"].numpy()  # digital numbers
    scaled = ChipDataset(chips, bands=["B04", "B08"], normalization="scale")[5]["image"].numpy()
    np.testing.assert_allclose(scaled, x * 1e-4, rtol=1e-6)  # the STAC item's raster:bands scale
    ms = ChipDataset(chips, bands=["B04", "B08"], normalization="meanstd", offset=-1000)[5]["image"].numpy()
    for i, b in enumerate(["B04", "B08"]):
        mean, std = (stats[b]["mean"] - 1000) * 1e-4, stats[b]["std"] * 1e-4
        np.testing.assert_allclose(ms[i], ((x[i] - 1000) * 1e-4 - mean) / std, rtol=1e-4, atol=1e-4)
    pc = ChipDataset(chips, bands=["B04", "B08"], normalization="percentile")[5]["image"].numpy()
    for i, b in enumerate(["B04", "B08"]):
        lo, hi = stats[b]["p2"] * 1e-4, stats[b]["p98"] * 1e-4
        np.testing.assert_allclose(pc[i], np.clip((x[i] * 1e-4 - lo) / (hi - lo), 0, 1), rtol=1e-4, atol=1e-5)
    # over many chips, meanstd input has about zero mean and unit std per band
    ds = ChipDataset(chips, normalization="meanstd")
    stack = torch.stack([ds[i]["image"] for i in range(0, len(ds), 3)])
    assert stack.mean((0, 2, 3)).abs().max() < 0.25 and (stack.std((0, 2, 3)) - 1).abs().max() < 0.3


def test_bad_normalisations_are_one_line_errors(chips, tmp_path):
    with pytest.raises(ConfigError, match="use one of scale, meanstd, percentile"):
        BandNormalization(["B02"], "zscore")
    with pytest.raises(ConfigError, match=r"needs mean for each of the 2 bands \(B02, B03\); got 1"):
        BandNormalization(["B02", "B03"], "meanstd", mean=[0.1], std=[0.1, 0.1])
    (tmp_path / "chips.csv").write_text((chips / "chips.csv").read_text())
    (tmp_path / "scenes").symlink_to(chips / "scenes")
    with pytest.raises(DataError, match="band_stats.json is missing: normalization=meanstd needs"):
        ChipDataset(tmp_path, normalization="meanstd")


@pytest.fixture(scope="module")
def export(chips, tmp_path_factory):
    """A 12-band ViT exported with the chips' preprocessing, as ``domainfm pretrain`` does."""
    ds = ChipDataset(chips, normalization="meanstd")
    model = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=12, depth=2)
    preprocess = {"img_size": 32, "in_chans": 12, "mean": [0.0] * 12, "std": [1.0] * 12, **ds.preprocess_info(32)}
    return export_backbone(model, tmp_path_factory.mktemp("run") / "export", preprocess), model, ds


def test_the_export_records_bands_and_loading_applies_the_normalisation(export):
    path, model, ds = export
    info = json.loads((path / "config.json").read_text())["domainfm"]
    assert info["bands"] == S2_BANDS and info["wavelengths_nm"][:3] == [443.0, 490.0, 560.0]
    assert (info["gsd_m"], info["chip_px"], info["chip_m"], info["input_gsd_m"]) == (100.0, 32, 3200.0, 100.0)
    assert info["normalization"]["convention"] == "meanstd" and len(info["normalization"]["mean"]) == 12
    assert "normalization" in (path / "README.md").read_text()  # the model card says it too
    spectral = SpectralBackbone.from_pretrained(str(path)).eval()
    raw = ChipDataset(ds.root)  # file values, the first scene's bands
    x = torch.stack([raw[i]["image"] for i in range(4)])
    expected = torch.stack([ds[i]["image"] for i in range(4)])
    torch.testing.assert_close(spectral.prepare(x, bands=raw.bands), expected, rtol=1e-5, atol=1e-5)
    model.eval()
    torch.testing.assert_close(spectral(x), model(expected), rtol=1e-4, atol=1e-4)
    # a chip dataset built from the weights reads their bands in their order, with their normalisation
    again = ChipDataset(ds.root, normalization=normalization_of(spectral.backbone))
    assert again.bands == S2_BANDS and torch.equal(again[2]["image"], ds[2]["image"])


def test_other_band_orders_or_counts_are_errors_naming_the_expected_bands(export):
    path, _, ds = export
    spectral = SpectralBackbone.from_pretrained(str(path))
    raw = ChipDataset(ds.root)
    x = torch.stack([raw[i]["image"] for i in range(2)])
    expected = "these weights expect 12 bands in this order: B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B11,B12"
    with pytest.raises(DataError, match=f"input has 3 bands; {expected}.*select_bands"):
        spectral(x[:, [3, 2, 1]])
    swapped = S2_BANDS[:]
    swapped[1], swapped[3] = "B04", "B02"
    with pytest.raises(DataError, match=f"input has bands B01,B04,B03,B02,.*; {expected}"):
        spectral(x, bands=swapped)
    # the documented fix: reorder by name
    reordered = select_bands(x[:, [0, 3, 2, 1, *range(4, 12)]], swapped, spectral.bands)
    torch.testing.assert_close(spectral(reordered, bands=spectral.bands), spectral(x))
    with pytest.raises(DataError, match="data.dataset.bands has bands B04,B03,B02; these weights expect 12"):
        ChipDataset(ds.root, bands=["B04", "B03", "B02"], normalization=normalization_of(spectral.backbone))
    plain = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3, depth=1)
    plain_dir = export_backbone(
        plain, path.parent.parent / "plain", {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    )
    with pytest.raises(DataError, match="records no band normalisation .*normalization=<scale|meanstd|percentile>"):
        SpectralBackbone.from_pretrained(str(plain_dir))


def test_spectral_views_keep_every_band_and_values_outside_0_1(chips):
    ds = ChipDataset(chips, normalization="meanstd")
    image = ds[7]["image"]
    torch.manual_seed(0)
    view = SpectralView(24, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, vflip=0.0, rot90=True)
    outs = [view(image) for _ in range(12)]
    assert all(o.shape == (12, 24, 24) for o in outs)
    assert min(float(o.min()) for o in outs) < -0.5  # normalised values are not clamped to [0, 1]
    # full-image crop, no flips: each output is the resized chip rotated by a multiple of 90 degrees
    from torchvision.transforms.v2 import functional as TF

    base = TF.resize(image, [24, 24], antialias=True)
    rotations = [torch.rot90(base, k, (-2, -1)) for k in range(4)]
    seen = {next(k for k, r in enumerate(rotations) if torch.allclose(o, r, atol=1e-5)) for o in outs}
    assert seen == {0, 1, 2, 3}


def test_spectral_jitter_is_per_band_and_drops_whole_bands():
    torch.manual_seed(1)
    image = torch.randn(12, 16, 16)
    out = SpectralJitter(brightness=0.3, contrast=0.3, p=1.0)(image)
    mean, new_mean = image.mean((1, 2)), out.mean((1, 2))
    gain = (out - new_mean[:, None, None]).std((1, 2)) / (image - mean[:, None, None]).std((1, 2))
    shift = new_mean - mean
    assert ((gain - 1).abs() <= 0.3 + 1e-5).all() and (shift.abs() <= 0.3 + 1e-5).all()
    assert gain.std() > 0.01 and shift.std() > 0.01  # each band has its own brightness and contrast
    # the affine map per band is exact: out = (x - m) * k + m + b
    for c in range(12):
        k = gain[c]
        torch.testing.assert_close(out[c], (image[c] - mean[c]) * k + mean[c] + shift[c], rtol=1e-4, atol=1e-4)
    drop = SpectralJitter(p=0.0, band_dropout=0.05, max_dropped=2)
    dropped = [int((drop(image) == 0).all((1, 2)).sum()) for _ in range(400)]
    # per band 5 %, at most 2: E[min(Binomial(12, 0.05), 2)] = 0.58
    assert max(dropped) == 2 and min(dropped) == 0 and 0.45 < np.mean(dropped) < 0.72


def test_rgb_only_jitter_refuses_multispectral_input(chips):
    image = ChipDataset(chips, normalization="percentile")[0]["image"]
    with pytest.raises(ValueError, match="got a 12-channel image; it only applies to RGB"):
        RGBPhotometric()(image)

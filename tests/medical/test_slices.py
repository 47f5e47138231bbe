"""CT windows / MR normalisation against independent computations (monai for the windows), slices of real volumes
(the hippocampus MR set, the bundled CT series through an index), and `medical/dinov2_slices_tiny` end to end."""

import json

import numpy as np
import pytest
import torch
from domainfm.errors import ConfigError, DataError
from domainfm.medical.datasets import VolumeSlices
from domainfm.medical.index import IndexParams, index_archive
from domainfm.medical.intensity import Intensity, ct_windows, percentile_zscore, window_bounds
from domainfm.medical.readers import read_volume

from tests.conftest import pretrain_in_process


def test_ct_windows_equal_monais_scale_intensity_range():
    from monai.transforms import ScaleIntensityRange

    hu = np.random.default_rng(0).uniform(-1200, 2000, (7, 6, 5)).astype(np.float32)
    out = ct_windows(hu, ["soft_tissue", "lung", [300, 1000]])
    for c, (lo, hi) in enumerate([(-160, 240), (-1350, 150), (-200, 800)]):
        reference = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(hu)
        np.testing.assert_allclose(out[c], np.asarray(reference), atol=1e-6)
    with pytest.raises(ConfigError, match="unknown CT window 'abdomen'; named windows: soft_tissue, lung"):
        window_bounds("abdomen")


def test_mr_percentile_zscore_by_hand():
    x = np.zeros((10, 10, 10), np.float32)
    x[2:8, 2:8, 2:8] = np.arange(216, dtype=np.float32).reshape(6, 6, 6) + 1
    out = percentile_zscore(x, 1.0, 99.0)[0]
    inside = x[x != 0]
    lo, hi = np.percentile(inside, [1, 99])
    clipped = np.clip(inside, lo, hi)
    expected = (np.clip(x, lo, hi) - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32 and abs(float(out[x != 0].mean())) < 1e-5


def test_slices_of_real_mr_volumes_follow_ras_and_the_display_convention(shared_data):
    root = shared_data / "medical" / "msd_task04_hippocampus_subset" / "imagesTr"
    axial = VolumeSlices(root, axis="axial")
    volume = read_volume(sorted(root.glob("*.nii.gz"))[0])
    x, y, z = volume.shape
    assert len(axial) == sum(read_volume(f).shape[2] for f in sorted(root.glob("*.nii.gz")))
    sample = axial[3]
    assert sample["image"].shape == (1, y, x) and sample["meta"]["slice"] == 3
    normalised = Intensity()(volume.array, "MR")[0]
    expected = normalised[:, :, 3].T[::-1, ::-1]  # anterior up, patient's right on the left
    np.testing.assert_allclose(sample["image"][0].numpy(), expected)
    everything = VolumeSlices(root, axis="all")
    assert len(everything) == sum(sum(read_volume(f).shape) for f in sorted(root.glob("*.nii.gz")))
    with pytest.raises(DataError, match=r"give 1 channel\(s\), the config expects 3 \(preprocess.in_chans\)"):
        VolumeSlices(root, in_chans=3)


def test_ct_slices_from_an_index_have_window_channels(shared_data, tmp_path):
    ct = shared_data / "medical" / "ct_3slice_series"
    index_archive(ct, tmp_path / "idx", IndexParams(cache=True, format="nii"), workers=1, progress=False)
    slices = VolumeSlices(tmp_path / "idx", axis="axial", in_chans=3)
    assert len(slices) == 3 and slices.in_chans == 3
    image = slices[0]["image"]
    hu = read_volume(ct).array[:, :, 0]
    expected = ct_windows(hu, ["soft_tissue", "lung", "bone"]).transpose(0, 2, 1)[:, ::-1, ::-1]
    assert image.shape == (3, 512, 512) and torch.allclose(image, torch.from_numpy(expected.copy()))
    index_archive(ct, tmp_path / "bare", workers=1, progress=False)
    with pytest.raises(DataError, match="the index has no cached volumes; rerun domainfm index with index.cache=true"):
        VolumeSlices(tmp_path / "bare")


def test_dinov2_slices_tiny_pretrains_on_mr_volumes_and_records_the_intensity(shared_data, tmp_path):
    root = shared_data / "medical" / "msd_task04_hippocampus_subset" / "imagesTr"
    run = tmp_path / "run"
    out = pretrain_in_process([
        "recipe=medical/dinov2_slices_tiny", f"data.root={root}", f"run_dir={run}", "preprocess.in_chans=1",
        "preprocess.mean=[0.0]", "preprocess.std=[1.0]", "trainer.max_steps=2", "data.batch_size=8",
        "data.num_workers=0", "trainer.progress=false", "trainer.tensorboard=false", "+backbone.depth=2",
        "method.out_dim=256", "method.hidden_dim=64",
    ])  # fmt: skip
    assert out["steps"] == 2 and np.isfinite(out["final_loss"])
    info = json.loads((run / "export" / "config.json").read_text())["domainfm"]
    assert info["intensity"]["mode"] == "auto" and info["slice_axis"] == "axial" and info["modality"] == ["MR"]

"""3D patches from real MR volumes (the hippocampus set): values against an independent crop of the normalised
volume, the patch queue's order and reads, and `medical/mae3d_tiny` end to end (export, reload, exact resume)."""

import json

import numpy as np
import pytest
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.backbones.vit3d import VisionTransformer3D
from domainfm.data.sampling import SeededDataset, StreamSampler
from domainfm.errors import DataError
from domainfm.medical import datasets
from domainfm.medical.datasets import VolumePatches
from domainfm.medical.intensity import Intensity
from domainfm.medical.readers import read_volume
from safetensors.torch import load_file

from tests.conftest import assert_resumes_exactly, pretrain_in_process


@pytest.fixture
def volumes(shared_data, tmp_path):
    """Four real T2 volumes of the hippocampus set, linked into a folder of their own."""
    src = sorted((shared_data / "medical" / "msd_task04_hippocampus_subset" / "imagesTr").glob("*.nii.gz"))[:4]
    root = tmp_path / "volumes"
    root.mkdir()
    for f in src:
        (root / f.name).symlink_to(f)
    return root


def test_patches_are_crops_of_the_normalised_volume_and_follow_the_seed(volumes):
    patches = VolumePatches(volumes, patch_size=(16, 24, 16), patches_per_volume=3, mean=0.5, std=2.0)
    assert len(patches) == 12 and patches.in_chans == 1
    seeded = SeededDataset(patches)
    sample = seeded[(4, 99)]  # volume 1
    x0, y0, z0 = sample["meta"]["start"]
    volume = read_volume(sorted(volumes.glob("*.nii.gz"))[1])
    expected = (Intensity()(volume.array, "MR")[:, x0 : x0 + 16, y0 : y0 + 24, z0 : z0 + 16] - 0.5) / 2.0
    assert sample["image"].shape == (1, 16, 24, 16) and sample["image"].dtype == torch.float32
    np.testing.assert_allclose(sample["image"].numpy(), expected, rtol=1e-6)
    assert torch.equal(seeded[(4, 99)]["image"], sample["image"])  # the stream's seed fixes the patch
    assert len({tuple(seeded[(4, s)]["meta"]["start"]) for s in range(6)}) > 1  # other seeds, other patches
    big = VolumePatches(volumes, patch_size=64, patches_per_volume=1)[0]["image"]  # larger than the volume: padded
    x, y, z = read_volume(sorted(volumes.glob("*.nii.gz"))[0]).shape
    assert big.shape == (1, 64, 64, 64) and torch.all(big[:, x:] == big.min()) and torch.all(big[:, :, y:] == big.min())
    with pytest.raises(DataError, match=r"rot90 turns the axial plane: patch_size \(16, 24, 16\) needs equal x and y"):
        VolumePatches(volumes, patch_size=(16, 24, 16), rot90=0.2)


def test_flips_and_turns_keep_the_voxels(volumes):
    plain = VolumePatches(volumes, patch_size=16, patches_per_volume=1)
    turned = VolumePatches(volumes, patch_size=16, patches_per_volume=1, flip=1.0, rot90=1.0)
    a, b = SeededDataset(plain)[(0, 5)], SeededDataset(turned)[(0, 5)]
    assert a["meta"]["start"] == b["meta"]["start"]  # the position is drawn before the augmentation
    expected = torch.rot90(a["image"].flip(1, 2, 3), 1, dims=(1, 2))  # every axis flipped, then one axial turn
    assert torch.equal(b["image"], expected)


def test_the_patch_queue_takes_volumes_a_window_at_a_time_and_reads_each_once(volumes, monkeypatch):
    groups = torch.arange(40) // 4  # 10 volumes x 4 patches
    sampler = StreamSampler(40, batch_size=8, seed=3, groups=(groups, 3))
    stream = iter(sampler)
    epoch = [next(stream)[0] for _ in range(40)]
    assert sorted(epoch) == list(range(40))  # a permutation per epoch
    windows = [epoch[:12], epoch[12:24], epoch[24:36], epoch[36:]]  # 3 volumes x 4 patches, then the last one
    assert [len({i // 4 for i in w}) for w in windows] == [3, 3, 3, 1]
    again = iter(StreamSampler(40, batch_size=8, seed=3, groups=(groups, 3)))
    assert [next(again)[0] for _ in range(40)] == epoch and epoch != sorted(epoch)  # seeded, shuffled
    with pytest.raises(ValueError, match="cannot be combined"):
        StreamSampler(40, 8, weights=torch.ones(40), groups=(groups, 3))

    reads = []
    real = datasets.read_volume
    monkeypatch.setattr(datasets, "read_volume", lambda path: reads.append(path) or real(path))
    patches = VolumePatches(volumes, patch_size=16, patches_per_volume=5, queue_volumes=2)
    ids, window = patches.sample_groups()
    stream = iter(StreamSampler(len(patches), 4, seed=0, groups=(ids, window)))
    seeded = SeededDataset(patches)
    for _ in range(len(patches)):  # one epoch
        seeded[next(stream)]
    assert len(reads) == 4 and len(set(reads)) == 4  # every volume decoded once in the epoch


def test_mae3d_tiny_pretrains_exports_a_3d_vit_and_resumes_exactly(volumes, tmp_path):
    common = [
        "recipe=medical/mae3d_tiny", f"data.root={volumes}", "data.batch_size=4", "data.num_workers=0",
        "trainer.progress=false", "trainer.tensorboard=false", "backbone.depth=2", "trainer.checkpoint_every=2",
        "data.dataset.patches_per_volume=2", "data.dataset.queue_volumes=2",
    ]  # fmt: skip
    once = tmp_path / "once"
    out = pretrain_in_process([*common, f"run_dir={once}", "trainer.max_steps=4"])
    assert out["steps"] == 4 and np.isfinite(out["final_loss"])
    config = json.loads((once / "export" / "config.json").read_text())
    assert config["architecture"] == "domainfm_vit3d" and config["pretrained_cfg"]["input_size"] == [1, 32, 32, 32]
    info = config["domainfm"]
    assert (
        info["modality"] == ["MR"] and info["patch_size_voxels"] == [32, 32, 32] and info["intensity"]["mode"] == "auto"
    )
    model = load_backbone(once)
    assert isinstance(model, VisionTransformer3D) and model(torch.zeros(1, 1, 32, 48, 32)).shape == (1, 192)
    assert (once / "report" / "reconstructions.png").stat().st_size > 1000

    reference = load_file(str(once / "export" / "model.safetensors"))
    assert_resumes_exactly(common, tmp_path / "twice", reference)  # killed after step 2, same command again


def test_foreground_crop_drops_the_background_around_the_body(volumes, tmp_path):
    """A real volume padded with zeros (as air / background around a body): the crop is the bounding box of the
    voxels above the normalised minimum, computed here with numpy; the export records it, and whole volumes read
    for classification are cropped the same way."""
    import nibabel as nib
    from domainfm.medical.labeled_volumes import read_normalised

    source = nib.load(sorted(volumes.glob("*.nii.gz"))[0])
    padded = np.pad(np.asarray(source.dataobj, dtype=np.float32), 6)
    folder = tmp_path / "padded"
    folder.mkdir()
    nib.save(nib.Nifti1Image(padded, source.affine), folder / "case.nii.gz")
    whole = VolumePatches(folder, patch_size=16).volume(0)
    cropped = VolumePatches(folder, patch_size=16, foreground=True)
    inside = np.argwhere(whole[0] > whole[0].min())
    lo, hi = inside.min(0), inside.max(0) + 1
    assert np.array_equal(cropped.volume(0), whole[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    assert all(hi - lo <= np.array(padded.shape) - 12)  # the padding is gone
    assert (
        cropped.preprocess_info()["foreground"] is True
        and "foreground" not in VolumePatches(folder, 16).preprocess_info()
    )
    reading = {"intensity": Intensity(mode="mr").to_dict(), "modality": "MR", "spacing": None, "mean": [0.0],
               "std": [1.0], "foreground": True}  # fmt: skip
    assert np.allclose(read_normalised(folder / "case.nii.gz", reading), cropped.volume(0))
    flat = np.full((1, 4, 4, 4), 2.0, np.float32)  # no foreground at all: kept whole
    assert datasets.crop_foreground(flat).shape == flat.shape

"""Volume-level classification with 3D backbones (``domainfm evaluate|finetune data.volumes=<csv>``) on the bundled
hippocampus MR volumes (real MSD Task04 files). The class label is derived from the real label maps: whether the
hippocampus (anterior + posterior voxels) is larger than the median of the 16 (a stand-in for an atrophy label; the
set has no clinical labels). The 3D ViT is a small random one exported here; whether pretraining helps is not
asked of it."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.backbones.vit3d import create_vit3d
from domainfm.engine.export import export_backbone
from domainfm.errors import DataError
from domainfm.medical.labeled_volumes import LabeledVolumes, VolumeView, read_normalised, resize_volume
from domainfm.sample_data import sample_path
from safetensors.numpy import load_file

from tests.conftest import compose

SAMPLE = sample_path("medical/hippocampus")
READING = {"intensity": {"mode": "mr", "windows": ["soft_tissue"], "percentiles": [0.5, 99.5], "nonzero": True},
           "modality": "MR", "spacing": None, "mean": [0.1], "std": [2.0]}  # fmt: skip


@pytest.fixture(scope="module")
def volumes_csv(tmp_path_factory):
    with open(SAMPLE / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    size = {r["image"]: int((np.asarray(nib.load(SAMPLE / r["label"]).dataobj) > 0).sum()) for r in rows}
    median = np.median(list(size.values()))
    path = tmp_path_factory.mktemp("volumes") / "volumes.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "group"])
        for r in rows:  # the bundle's own split; the group column is the case itself (one volume per patient)
            writer.writerow([r["image"], "large" if size[r["image"]] > median else "small", r["split"], r["image"]])
    return path


@pytest.fixture(scope="module")
def export3d(tmp_path_factory):
    torch.manual_seed(0)
    vit = create_vit3d("vit3d_tiny", img_size=16, patch_size=8, in_chans=1, depth=2)
    record = {"img_size": 16, "in_chans": 1, "mean": [0.0], "std": [1.0], "modality": ["MR"],
              "intensity": READING["intensity"]}  # fmt: skip
    return export_backbone(vit, tmp_path_factory.mktemp("vit3d") / "export", record, tag="t")


def test_volumes_are_read_in_ras_normalised_and_resized():
    path = SAMPLE / "imagesTr" / "hippocampus_001.nii.gz"
    ras = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, dtype=np.float32)
    nonzero = ras[ras != 0]
    lo, hi = np.percentile(nonzero, [0.5, 99.5])
    ref = np.clip(nonzero, lo, hi)
    expected = (((np.clip(ras, lo, hi) - ref.mean()) / ref.std()) - 0.1) / 2.0  # nnU-Net's MR rule, then mean / std
    x = read_normalised(path, READING)
    assert x.shape == (1, *ras.shape) and np.allclose(x[0], expected, atol=1e-4)
    t = torch.from_numpy(x)
    from monai.transforms import Resize

    for size in ((40, 56, 40), (8, 12, 8)):  # monai's Resize (trilinear, its default: no anti-aliasing)
        expected = torch.as_tensor(Resize(spatial_size=size, mode="trilinear")(t))
        assert torch.allclose(resize_volume(t, size), expected, atol=1e-5)
    constant = resize_volume(torch.full((1, 30, 40, 50), 3.0), (8, 8, 8))  # no border darkening when shrinking
    assert constant.shape == (1, 8, 8, 8) and torch.allclose(constant, torch.tensor(3.0))
    data = LabeledVolumes([path], [1], ["a"], READING, (16, 16, 16))
    item = data[0]
    assert item["label"] == 1 and item["meta"] == {"id": "a"}
    assert torch.allclose(item["image"], resize_volume(t, (16, 16, 16)))


def test_the_training_view_crops_a_voxel_fraction_and_flips():
    x = torch.arange(32, dtype=torch.float32).view(1, 32, 1, 1).expand(1, 32, 32, 32).contiguous()
    torch.manual_seed(0)
    whole = VolumeView((32, 32, 32), crop_scale=(1.0, 1.0), hflip=1.0)(x)
    assert torch.allclose(whole, torch.flip(x, [1]))  # the whole volume, flipped left-right
    for _ in range(5):
        part = VolumeView((32, 32, 32), crop_scale=(0.125, 0.125), hflip=0.0)(x)  # 1/8 of the voxels: half a side
        span = part.amax() - part.amin()
        assert 14.0 <= span <= 16.0 and part[0, 0, 0, 0] < part[0, -1, 0, 0]  # 16 of 32 positions, not flipped


def test_evaluate_on_volumes_runs_the_core_protocols(volumes_csv, export3d, tmp_path):
    from domainfm.commands import evaluate

    cfg = compose("evaluate", [f"data.volumes={volumes_csv}", f"data.root={SAMPLE}", f"backbone={export3d}",
                               "protocol=[knn]", "knn.k=3", f"run_dir={tmp_path}", "progress=false"])  # fmt: skip
    results = evaluate.run(cfg)
    ((knn,),) = results.values()
    assert knn["protocol"] == "knn" and knn["n"] == 6  # the bundle's test split
    splits = list(csv.DictReader((tmp_path / "splits.csv").open()))
    assert sum(r["split"] == "test" for r in splits) == 6
    assert "6 | " in (tmp_path / "summary.md").read_text()


def test_finetune_on_volumes_exports_a_3d_backbone_with_its_reading(volumes_csv, export3d, tmp_path):
    from domainfm.commands import finetune

    cfg = compose("finetune", [f"data.volumes={volumes_csv}", f"data.root={SAMPLE}", f"backbone={export3d}",
                               f"run_dir={tmp_path}", "trainer.max_steps=2", "trainer.eval_every=2",
                               "trainer.checkpoint_every=2", "data.batch_size=4", "report.plots=false",
                               "trainer.progress=false"])  # fmt: skip
    results = finetune.run(cfg)
    ((result,),) = results.values()
    assert result["protocol"] == "finetune" and result["n"] == 6
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architecture"] == "domainfm_vit3d" and config["pretrained_cfg"]["input_size"] == [1, 16, 16, 16]
    assert config["domainfm"]["intensity"] == READING["intensity"] and config["domainfm"]["modality"] == ["MR"]
    before, after = load_file(export3d / "model.safetensors"), load_file(tmp_path / "export" / "model.safetensors")
    assert before.keys() == after.keys() and any(not np.array_equal(before[k], after[k]) for k in before)
    assert load_backbone(tmp_path / "export")(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 192)


def test_a_2d_backbone_or_a_missing_volume_is_one_line(volumes_csv, tmp_path):
    from domainfm.backbones.vit import create_vit
    from domainfm.commands import evaluate

    vit = create_vit("vit_tiny_patch16_224", img_size=32, in_chans=1)
    flat = export_backbone(vit, tmp_path / "vit2d", {"img_size": 32, "in_chans": 1, "mean": [0.0], "std": [1.0]})
    base = [f"data.volumes={volumes_csv}", f"data.root={SAMPLE}", "protocol=[knn]", f"run_dir={tmp_path / 'r'}"]
    with pytest.raises(DataError, match=r"is a 2D backbone; data.volumes needs a 3D one"):
        evaluate.run(compose("evaluate", [*base, f"backbone={flat}"]))
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimagesTr/nothing.nii.gz,small\nimagesTr/hippocampus_001.nii.gz,large\n")
    with pytest.raises(DataError, match=r"bad.csv: line 2: .*nothing.nii.gz not found"):
        evaluate.run(compose("evaluate", [*base, f"data.volumes={bad}", f"backbone={flat}"]))

"""The medical demo (``domainfm demo medical``) on the bundled hippocampus MR volumes (real MSD Task04 files): the
bundle is what its README says, and a few-step run goes from raw NIfTI to the index, a pretrained and exported 3D
ViT, and UNETR segmentation results for it and its random init. Whether pretraining wins is measured in
docs/benchmarks.md (benchmarks/hippocampus_mae3d.py), not here."""

import csv
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from domainfm.sample_data import sample_path
from safetensors.numpy import load_file

from tests.conftest import SHARED_DATA

SAMPLE = sample_path("medical/hippocampus")
SOURCE = SHARED_DATA / "medical" / "msd_task04_hippocampus_subset"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_bundle_is_unchanged_copies_with_a_patient_disjoint_split():
    with open(SAMPLE / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [8, 2, 6]
    assert len({r["image"] for r in rows}) == 16
    for row in rows:
        for key in ("image", "label"):
            copy = SAMPLE / row[key]
            assert _digest(copy) == _digest(SOURCE / row[key]), copy
        image, label = nib.load(SAMPLE / row["image"]), nib.load(SAMPLE / row["label"])
        assert image.shape == label.shape and np.allclose(image.affine, label.affine)
        assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from domainfm.medical import demo

    out = tmp_path_factory.mktemp("demo_medical")
    return out, demo.main(out=str(out), steps="2", finetune_steps="2")


def test_the_demo_goes_from_raw_volumes_to_segmentation_results(demo_run):
    out, result = demo_run
    with open(out / "index" / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == 16 and {r["status"] for r in manifest} == {"ok"}
    export = json.loads((out / "mae3d_tiny" / "export" / "config.json").read_text())
    assert export["architecture"] == "domainfm_vit3d" and export["pretrained_cfg"]["input_size"] == [1, 32, 32, 32]
    baseline = json.loads((out / "random_init" / "export" / "config.json").read_text())
    assert baseline["model_args"] == export["model_args"] and baseline["domainfm"] == export["domainfm"]
    trained = load_file(out / "mae3d_tiny" / "export" / "model.safetensors")
    scratch = load_file(out / "random_init" / "export" / "model.safetensors")
    assert trained.keys() == scratch.keys()
    assert any(not np.array_equal(trained[k], scratch[k]) for k in trained)
    results = result["results"]
    assert set(results) == {"mae3d_tiny", "random_init"}
    for name, r in results.items():
        assert r["cases"] == r["mean_dice"]["n"] == 6  # the six test volumes
        assert 0.0 <= r["mean_dice"]["mean"] <= 1.0
        assert set(r["dice"]) == {"anterior", "posterior"}
        predictions = sorted((out / "segmentation" / name / "predictions").glob("*.nii.gz"))
        assert len(predictions) == 6
        assert (out / "segmentation" / name / "report" / "segmentation.png").is_file()
    assert (out / "mae3d_tiny" / "report" / "reconstructions.png").is_file()
    assert "mean Dice" in (out / "segmentation" / "summary.md").read_text()

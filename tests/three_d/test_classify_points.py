"""`domainfm evaluate|finetune data.points=` on real ModelNet10 voxel shapes (chairs and monitors as class folders)
with a small random point encoder exported here: the ModelNet SVM protocol through the core, the [max | mean]
pooling, fixed evaluation points, and one-line errors. Whether Point-MAE learns is not asked here."""

import gzip

import numpy as np
import pytest
import torch
from domainfm.engine.export import export_backbone
from domainfm.errors import DataError
from domainfm.three_d.commands.classify_points import LabeledClouds, labeled_clouds
from domainfm.three_d.point_encoder import PointTransformer

from tests.conftest import SHARED_DATA, compose


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("modelnet")
    for name in ("chair", "monitor"):
        with gzip.open(SHARED_DATA / "three_d" / f"modelnet10_vox32_{name}.npy.gz") as f:
            grids = np.load(f)
        full = [g for g in grids if g.sum() > 0][:24]
        (root / name).mkdir()
        np.save(root / name / f"{name}s.npy", np.stack(full))
    return root


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory):
    torch.manual_seed(0)
    enc = PointTransformer(num_group=16, group_size=8, embed_dim=32, depth=2, num_heads=2)
    return export_backbone(enc.eval(), tmp_path_factory.mktemp("enc") / "export", {"n_points": 128}, tag="t")


def test_the_prefix_token_is_the_max_so_core_poolings_read_max_and_mean():
    from domainfm.evaluation.features import pool_tokens

    enc = PointTransformer(num_group=8, group_size=4, embed_dim=16, depth=1, num_heads=2).eval()
    points = torch.randn(2, 64, 3)
    tokens = enc.encode(*enc.group(points))
    seen = enc.forward_features(points)
    assert torch.allclose(seen[:, 0], tokens.max(dim=1).values) and torch.allclose(seen[:, 1:], tokens)
    both = torch.cat([tokens.max(1).values, tokens.mean(1)], -1)
    assert torch.allclose(enc(points), both) and torch.allclose(pool_tokens(seen, 1, "both"), both)


def test_labeled_class_folders_give_fixed_evaluation_clouds(classes):
    data, members = labeled_clouds(classes)
    assert data.classes == ["chair", "monitor"] and len(data) == 48 and data.ids[0] == "chair/chairs.npy[0]"
    clouds = LabeledClouds(members, data.labels, data.ids, 128)
    a, b = clouds[3], clouds[3]
    assert a["image"].shape == (128, 3) and torch.equal(a["image"], b["image"]) and a["label"] == 0
    assert np.isclose(np.sqrt((a["image"].numpy() ** 2).sum(1)).max(), 1.0, atol=1e-5)  # unit sphere, no augment


def test_evaluate_runs_the_svm_protocol_on_point_clouds(classes, encoder_export, tmp_path):
    from domainfm.commands import evaluate

    cfg = compose("evaluate", [f"data.points={classes}", f"backbone={encoder_export}", "protocol=[svm,knn]",
                               "pooling=both", "knn.k=5", f"run_dir={tmp_path}", "progress=false"])  # fmt: skip
    results = evaluate.run(cfg)
    ((svm, knn),) = results.values()
    assert svm["protocol"] == "svm" and svm["n"] == knn["n"] > 0 and svm["details"]["selected"].startswith("C=")
    assert "svm" in (tmp_path / "summary.md").read_text()


def test_errors_name_the_problem(classes, tmp_path):
    from domainfm.backbones.vit import create_vit
    from domainfm.commands import evaluate

    with pytest.raises(DataError, match="1 class sub-folder"):
        labeled_clouds(_one_class(classes, tmp_path))
    vit = create_vit("vit_tiny_patch16_224", img_size=32, in_chans=3)
    flat = export_backbone(vit, tmp_path / "vit", {"img_size": 32, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3})
    cfg = compose("evaluate", [f"data.points={classes}", f"backbone={flat}", "protocol=[svm]", f"run_dir={tmp_path}"])
    with pytest.raises(DataError, match="is not a point encoder"):
        evaluate.run(cfg)


def _one_class(classes, tmp_path):
    only = tmp_path / "one"
    only.mkdir()
    (only / "chair").symlink_to(classes / "chair")
    return only


def test_finetune_trains_on_point_maes_views_and_exports_the_encoder(classes, encoder_export, tmp_path):
    from domainfm.backbones.loading import load_backbone
    from domainfm.commands import finetune
    from safetensors.torch import load_file

    data, members = labeled_clouds(classes)
    train = LabeledClouds(members, data.labels, data.ids, 128, train=True)
    torch.manual_seed(3)
    a = train[0]["image"]
    torch.manual_seed(3)
    assert torch.equal(a, train[0]["image"]) and not torch.equal(
        a, LabeledClouds(members, data.labels, data.ids, 128)[0]["image"]
    )
    cfg = compose("finetune", [f"data.points={classes}", f"backbone={encoder_export}", f"run_dir={tmp_path}",
                               "trainer.max_steps=3", "trainer.eval_every=3", "trainer.checkpoint_every=3",
                               "data.batch_size=8", "finetune.pooling=both", "report.plots=false",
                               "trainer.progress=false"])  # fmt: skip
    ((result,),) = finetune.run(cfg).values()
    assert result["protocol"] == "finetune" and result["n"] > 0
    tuned = load_backbone(tmp_path / "export")
    assert isinstance(tuned, PointTransformer)
    before, after = (
        load_file(str(encoder_export / "model.safetensors")),
        load_file(str(tmp_path / "export" / "model.safetensors")),
    )
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

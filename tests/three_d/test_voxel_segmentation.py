"""Semantic voxel finetuning (NeRF-MAE's downstream protocol): the head is the official semantic decoder's last
stages, the loss is class-weighted cross-entropy over labeled voxels only (computed by hand here), the turn/flips
move labels with the grid, and `domainfm finetune data.grids=` finetunes two encoders side by side on the probe's
scene splits, exports them with their head, draws the labels and resumes. Grids are synthetic (labelled synthetic:
no labeled radiance grid is redistributable)."""

import json

import numpy as np
import pytest
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.backbones.vit3d import create_vit3d
from domainfm.engine.export import export_backbone
from domainfm.errors import ConfigError
from domainfm.three_d.synthetic_grids import write_synthetic_grids
from domainfm.three_d.voxel_probe import LabeledGrid, read_labeled_grids
from domainfm.three_d.voxel_segmentation import (
    GridSegmenter,
    LabeledGridSet,
    SemanticVoxelHead,
    balanced_weights,
    head_widths,
)
from torch import nn

from tests.conftest import compose


def _encoder(size=16, depth=1):
    return create_vit3d("vit3d_tiny", img_size=size, patch_size=4, in_chans=4, depth=depth)


def test_the_head_is_the_official_semantic_decoders_last_stages():
    assert head_widths(32) == [512, 256, 128, 64, 32]  # the official Swin decoder (1/32 of the resolution)
    assert head_widths(4) == [64, 32] and head_widths(8) == [128, 64, 32]
    head = SemanticVoxelHead(192, 4, classes=5)
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Conv3d, nn.InstanceNorm3d, nn.LeakyReLU, nn.Upsample] * 2 + [nn.Conv3d]
    convs = [m for m in head.layers if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (192, 64, (3, 3, 3)), (64, 32, (3, 3, 3)), (32, 5, (3, 3, 3))]  # fmt: skip
    norms = [m for m in head.layers if isinstance(m, nn.InstanceNorm3d)]
    assert not any(n.affine for n in norms)  # nn.InstanceNorm3d(c) as official
    assert all(m.negative_slope == 0.2 for m in head.layers if isinstance(m, nn.LeakyReLU))
    assert head(torch.rand(2, 192, 3, 3, 3)).shape == (2, 5, 12, 12, 12)
    with pytest.raises(ValueError, match="power-of-two patch size"):
        head_widths(6)


def test_the_loss_is_weighted_cross_entropy_over_labeled_voxels():
    torch.manual_seed(0)
    weights = torch.tensor([0.5, 2.0, 1.0])
    method = GridSegmenter(_encoder(), classes=3, class_weights=weights)
    grid = torch.rand(2, 4, 16, 16, 16)
    label = torch.randint(0, 4, (2, 16, 16, 16))  # 0 = unlabeled
    loss = method({"image": grid, "label": label})["loss"]
    logits = method.logits(grid).permute(0, 2, 3, 4, 1).reshape(-1, 3).double()
    y = label.reshape(-1)
    keep = y > 0
    logp = torch.log_softmax(logits[keep], -1)
    w = weights.double()[y[keep] - 1]
    expected = (-(w * logp[torch.arange(int(keep.sum())), y[keep] - 1]).sum() / w.sum()).detach()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_balanced_weights_are_inverse_class_frequency():
    a = LabeledGrid("a", np.array([0, 1, 1, 1, 2, 0]).reshape(1, 2, 3))
    b = LabeledGrid("b", np.array([1, 2, 3, 3, 0, 0]).reshape(1, 2, 3))
    # counts: class 1: 4, class 2: 2, class 3: 2 -> n = 8, K = 3: 8 / (3 * count)
    assert balanced_weights([a, b], 3).tolist() == pytest.approx([8 / 12, 8 / 6, 8 / 6])
    assert balanced_weights([a], 3).tolist() == pytest.approx([4 / 9, 4 / 3, 1.0])  # class 3 unseen: 1


def test_turns_and_flips_move_the_labels_with_the_grid(tmp_path):
    rng = np.random.default_rng(0)
    rgbsigma = rng.uniform(size=(12, 10, 8, 4)).astype(np.float32)
    labels = 1 + (rgbsigma[..., 0] > 0.5).astype(np.uint8)  # a label read off the voxel's red value
    np.savez(tmp_path / "s.npz", rgbsigma=rgbsigma, labels=labels)
    data = LabeledGridSet(read_labeled_grids(tmp_path), 16, augment=True)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        sample = data[0]
        image, label = sample["image"], sample["label"]
        real = label > 0
        assert int(real.sum()) == 12 * 10 * 8 and image.shape == (4, 16, 16, 16)
        assert torch.equal(label[real], 1 + (image[0][real] > 0.5).long())
        seen.add(tuple(int(s) for s in torch.nonzero(real).max(0).values))
    assert {(11, 9, 7), (9, 11, 7)} <= seen  # some draws turned W and L


def test_finetune_on_grids_compares_encoders_on_the_probe_splits_exports_and_resumes(tmp_path):
    labeled = tmp_path / "labeled"
    write_synthetic_grids(labeled, 8, size=16, seed=3, labels=True)
    sources = []
    for i, name in enumerate(["pre", "rand"]):
        torch.manual_seed(i)
        preprocess = {"mean": [0.0] * 4, "std": [1.0] * 4, "in_chans": 4, "img_size": [16] * 3, "input": "rgbsigma"}
        sources.append(export_backbone(_encoder(), tmp_path / name / "export", preprocess).parent)
    overrides = [f"data.grids={labeled}", f"backbone=[{sources[0]},{sources[1]}]", f"run_dir={tmp_path / 'ft'}",
                 "trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=2", "trainer.progress=false",
                 "trainer.tensorboard=false", "data.num_workers=0", "voxel_finetune.batch_size=2"]  # fmt: skip
    from domainfm.three_d.commands.voxel_finetune import finetune

    results = finetune(compose("finetune", overrides))
    assert list(results) == ["pre", "rand"]
    splits = (tmp_path / "ft" / "splits.csv").read_text()
    from domainfm.three_d.commands.voxel_probe import evaluate

    evaluate(compose("evaluate", [f"data.grids={labeled}", f"backbone={sources[0]}", f"run_dir={tmp_path / 'probe'}",
                                  "linear.Cs=[1.0]"]))  # fmt: skip
    assert (tmp_path / "probe" / "splits.csv").read_text() == splits  # the same scenes in each split
    for name, r in results.items():
        run = tmp_path / "ft" / name
        assert r["steps"] == 4 and r["best_step"] in (2, 4) and 0 <= r["metrics"]["miou"] <= 1
        assert r["ci"]["miou"][0] <= r["metrics"]["miou"] <= r["ci"]["miou"][1]
        assert r["test_voxels"] > 0 and len(r["iou_per_class"]) == 4
        encoder = load_backbone(run / "export")
        before = load_backbone(sources[0] if name == "pre" else sources[1])
        assert not torch.equal(encoder.blocks[0].attn.qkv.weight, before.blocks[0].attn.qkv.weight)  # finetuned
        head = torch.load(run / "export" / "voxel_head.pt", weights_only=True)
        assert head["classes"] == 4 and "layers.0.weight" in head["head"]
        assert json.loads((run / "export" / "config.json").read_text())["domainfm"]["input"] == "rgbsigma"
        assert (run / "report" / "voxels.png").is_file() and json.loads((run / "results.json").read_text())
    assert "| pre |" in (tmp_path / "ft" / "summary.md").read_text()
    again = finetune(compose("finetune", overrides))  # resumes from the finished checkpoints: same results
    assert again["pre"]["metrics"] == results["pre"]["metrics"]
    with pytest.raises(ConfigError, match="voxel_finetune.class_weights='inverse'; valid values: balanced, none"):
        finetune(compose("finetune", [*overrides, "voxel_finetune.class_weights=inverse"]))

"""Finetuning: layer-wise lr decay groups, last-n-blocks freezing, best-on-validation checkpoint tested."""

import json

import numpy as np
import pytest
import torch
from domainfm.backbones.vit import create_vit
from domainfm.engine.optim import build_optimizer
from domainfm.engine.trainer import TrainerConfig
from domainfm.evaluation.datasets import ImageList, load_labeled, with_splits
from domainfm.evaluation.features import load_eval_backbone
from domainfm.evaluation.finetune import Classifier, finetune, predict_images


def test_layer_decay_scales_and_weight_decay_groups():
    model = Classifier(create_vit(img_size=32, patch_size=8, depth=4), 3, layer_decay=0.5, drop_path=0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for group in build_optimizer(model, lr=1.0, weight_decay=0.05).param_groups:
        for p in group["params"]:
            seen[names[id(p)]] = (group["lr_scale"], group["weight_decay"])
    assert len(seen) == len(names)  # every parameter once
    assert seen["head.weight"] == (1.0, 0.05) and seen["head.bias"] == (1.0, 0.0)
    assert seen["backbone.norm.weight"] == (1.0, 0.0)
    assert seen["backbone.blocks.3.mlp.fc1.weight"] == (0.5, 0.05)
    assert seen["backbone.blocks.0.attn.qkv.weight"] == (0.5**4, 0.05)
    assert seen["backbone.patch_embed.proj.weight"] == (0.5**5, 0.05)
    assert seen["backbone.cls_token"] == (0.5**5, 0.0) and seen["backbone.pos_embed"] == (0.5**5, 0.0)


def test_last_n_blocks_and_drop_path():
    model = Classifier(create_vit(img_size=32, patch_size=8, depth=4), 3, train_blocks=1, drop_path=0.3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "backbone.norm.weight", "backbone.blocks.3.attn.qkv.weight"} <= trainable
    assert not any(
        n.startswith(("backbone.blocks.2.", "backbone.patch_embed", "backbone.pos_embed")) for n in trainable
    )
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.backbone.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_finetune_tests_the_best_validation_checkpoint(tmp_path, eurosat, tiny_export):
    data = with_splits(load_labeled(eurosat), val=0.2, test=0.2, seed=0)
    backbone, pre = load_eval_backbone(str(tiny_export))
    frozen_before = backbone.patch_embed.proj.weight.detach().clone()
    cfg = TrainerConfig(
        max_steps=6,
        batch_size=8,
        num_workers=0,
        lr=1e-3,
        warmup_steps=0,
        eval_every=2,
        patience=0,
        monitor="val_balanced_accuracy",
        monitor_mode="max",
        checkpoint_every=100,
        progress=False,
        tensorboard=False,
        log_every=1,
    )
    method, summary, best = finetune(backbone, pre, data, tmp_path / "ft", cfg, train_blocks=1, balanced=True)
    logged = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_balanced_accuracy"] for r in logged if "val_balanced_accuracy" in r}
    assert sorted(val) == [2, 4, 6]
    assert best == max(val, key=lambda s: (val[s], -s)) and summary.best_step == best
    state = torch.load(tmp_path / "ft" / "checkpoints" / "best.pt", weights_only=True)
    for k, v in method.state_dict().items():
        torch.testing.assert_close(v, state["model"][k])
    torch.testing.assert_close(method.backbone.patch_embed.proj.weight, frozen_before)  # frozen stays put
    val_set = ImageList.of(data.select("val"), 3, pre.view())
    probs = predict_images(method, val_set, batch_size=7)
    balanced = np.mean([(probs.argmax(1)[data.select("val").labels == c] == c).mean() for c in range(10)])
    assert balanced == pytest.approx(val[best])  # the tested state is the one that scored best on val


def test_class_balance_weights_draw_classes_equally():
    from domainfm.evaluation.training import class_balance_weights

    labels = np.array([0] * 30 + [1] * 10 + [2] * 5)
    w = class_balance_weights(labels, 4)
    assert [float(w[labels == c].sum()) for c in range(3)] == pytest.approx([1.0, 1.0, 1.0])

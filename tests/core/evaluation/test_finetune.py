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


def test_mixup_trains_on_soft_targets_of_the_mixed_batch():
    torch.manual_seed(0)
    model = Classifier(create_vit(img_size=32, patch_size=8, depth=1), 3, drop_path=0.0, mixup=0.8,
                       label_smoothing=0.1)  # fmt: skip
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    np.random.seed(7)
    loss = model({"image": images, "label": labels}, None)["loss"]
    np.random.seed(7)
    lam = np.random.beta(
        0.8, 0.8
    )  # timm Mixup, batch mode, mixup only: lam ~ Beta(alpha, alpha), x pairs with x.flip(0)
    mixed = lam * images + (1 - lam) * images.flip(0)
    off, on = 0.1 / 3, 1 - 0.1 + 0.1 / 3  # smoothed one-hot
    onehot = torch.full((4, 3), off).scatter_(1, labels[:, None], on)
    soft = lam * onehot + (1 - lam) * onehot.flip(0)
    with torch.no_grad():
        expected = -(soft * torch.log_softmax(model.logits(mixed), -1)).sum(-1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    odd = model({"image": images[:3], "label": labels[:3]}, None)["loss"]  # an odd batch is not mixed
    with torch.no_grad():
        plain = torch.nn.functional.cross_entropy(model.logits(images[:3]), labels[:3], label_smoothing=0.1)
    assert float(odd.detach()) == pytest.approx(float(plain), rel=1e-5)


def test_random_erasing_replaces_one_region_of_the_view():
    from domainfm.errors import ConfigError
    from domainfm.evaluation.finetune import ErasedView

    image = torch.rand(3, 32, 32)
    torch.manual_seed(0)
    erased = ErasedView(lambda x: x.clone(), 1.0)(image)
    changed = (erased != image).any(0)
    rows, cols = torch.nonzero(changed).unbind(1)
    box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all() and int(box.sum()) == int(changed.sum()) > 0  # one rectangle, all of it replaced
    assert 0.02 * 32 * 32 <= int(changed.sum()) <= 32 * 32 / 3 + 40  # timm's area range (1/50 .. 1/3)
    assert torch.equal(ErasedView(lambda x: x.clone(), 0.0)(image), image)
    with pytest.raises(ConfigError, match=r"finetune.erase erases image regions \(C, H, W\); this view gives \(5, 3\)"):
        ErasedView(lambda x: torch.zeros(5, 3), 1.0)(image)

"""Gated-attention MIL: padding invariance, attention normalisation, learning a synthetic MIL task."""

import numpy as np
import pytest
import torch
from domainfm.errors import DataError
from domainfm.evaluation.abmil import GatedAttentionMIL, bags_from_groups, collate_bags, train_abmil
from domainfm.evaluation.metrics import scores


def test_padding_gets_no_attention_and_changes_nothing():
    torch.manual_seed(0)
    model = GatedAttentionMIL(6, 3, hidden=16, attn_dim=8, heads=2).eval()
    short, long = torch.randn(4, 6), torch.randn(9, 6)
    batch = collate_bags([{"image": short, "label": 0}, {"image": long, "label": 1}])
    assert batch["image"].shape == (2, 9, 6) and batch["mask"].sum(1).tolist() == [4, 9]
    logits, attention = model(batch["image"], batch["mask"])
    alone, alone_attention = model(short[None])
    torch.testing.assert_close(logits[0], alone[0])
    assert attention.shape == (2, 2, 9)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 2))
    assert (attention[0, :, 4:] == 0).all()
    torch.testing.assert_close(attention[0, :, :4], alone_attention[0])


def _mil_bags(n, rng):
    """Synthetic: 8-d Gaussian instances; a positive bag hides 1-2 'key' instances shifted by +4 on dim 0."""
    bags, labels, keys = [], [], []
    for i in range(n):
        bag = rng.normal(size=(rng.integers(6, 15), 8))
        positive = i % 2
        key = rng.choice(len(bag), rng.integers(1, 3), replace=False) if positive else []
        bag[key, 0] += 4.0
        bags.append(bag.astype(np.float32))
        labels.append(positive)
        keys.append(key)
    return bags, np.array(labels), keys


def test_abmil_learns_a_synthetic_mil_task_and_attends_to_key_instances(tmp_path):
    rng = np.random.default_rng(0)
    train, val, test = _mil_bags(80, rng), _mil_bags(20, rng), _mil_bags(30, rng)
    model, info = train_abmil(
        train[:2],
        val[:2],
        2,
        tmp_path / "abmil",
        hidden=32,
        attn_dim=16,
        steps=60,
        batch_size=8,
        lr=1e-2,
        eval_every=20,
        patience=0,
        progress=False,
        device="cpu",
    )
    assert (tmp_path / "abmil" / "checkpoints" / "best.pt").exists() and info["best_step"] % 20 == 0
    probs, attention = model.predict(test[0])
    assert scores(test[1], probs)["auroc"] > 0.9
    hits = [int(np.argmax(a[0])) in keys for a, keys in zip(attention, test[2]) if len(keys)]
    assert np.mean(hits) > 0.8


def test_bags_from_groups():
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    groups = np.array(["a", "a", "b", "c", "c", "c"], dtype=object)
    splits = np.array(["train", "train", "val", "test", "test", "test"], dtype=object)
    bags = bags_from_groups(feats, np.array([1, 1, 0, 2, 2, 2]), groups, splits)
    names, b, y = bags["test"]
    assert names == ["c"] and b[0].shape == (3, 2) and y.tolist() == [2]
    with pytest.raises(DataError, match="group 'a' has samples of 2 labels"):
        bags_from_groups(feats, np.array([1, 0, 0, 2, 2, 2]), groups, splits)

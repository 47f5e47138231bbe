"""Logistic probe against scikit-learn on the same features; DINOv2-style grid of linear heads."""

import numpy as np
import pytest
from domainfm.evaluation.features import Features
from domainfm.evaluation.linear import LinearHeads, fit_logistic, linear_grid, logistic_probe
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score


@pytest.mark.parametrize("classes,C", [(2, 1.0), (10, 0.1), (10, 10.0)])
def test_logistic_matches_sklearn(eurosat_pixels, classes, C):
    x, y = eurosat_pixels
    keep = y < classes
    x, y = x[keep], y[keep]
    ours = fit_logistic(x, y, classes, C=C, solver="torch")
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(x, y)
    np.testing.assert_allclose(ours.predict_proba(x), ref.predict_proba(x), atol=2e-4)
    if classes > 2:  # the softmax parameterisation is identifiable up to a shift; sklearn's is centred
        w = ours.weight.numpy()
        np.testing.assert_allclose(w - w.mean(0), ref.coef_ - ref.coef_.mean(0), atol=2e-3)
    else:
        np.testing.assert_allclose(ours.weight.numpy(), ref.coef_, atol=2e-3)


def test_c_search_picks_the_best_validation_score(eurosat_pixels):
    x, y = eurosat_pixels
    train, val = np.arange(100) % 3 != 0, np.arange(100) % 3 == 0
    Cs = [0.01, 0.1, 1.0]
    model, info = logistic_probe((x[train], y[train]), (x[val], y[val]), 10, Cs=Cs, solver="torch")
    ref = {
        C: balanced_accuracy_score(
            y[val], LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(x[train], y[train]).predict(x[val])
        )
        for C in Cs
    }
    assert info["val"] == pytest.approx(ref)
    assert info["C"] == max(Cs, key=lambda C: (ref[C], -C))
    np.testing.assert_allclose(model.predict_proba(x[val]).sum(1), 1.0)
    cpu, cpu_info = logistic_probe((x[train], y[train]), (x[val], y[val]), 10, Cs=[info["C"]])  # sklearn on CPU
    np.testing.assert_allclose(cpu.predict_proba(x[val]), model.predict_proba(x[val]), atol=5e-3)


def test_linear_grid_one_pass_selects_best_head_on_val(tmp_path):
    """Synthetic features: the class is linearly readable from the cls half only; the mean half is noise."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    cls = rng.normal(size=(300, 4)) + 3.0 * np.eye(3, 4)[y]
    mean = rng.normal(size=(300, 4))
    feats = Features(np.hstack([cls, mean]).astype(np.float32), y, [str(i) for i in range(300)], "both", 4)
    lrs = [1e-5, 0.1]
    heads, best, info = linear_grid(
        feats,
        np.arange(200),
        np.arange(200, 300),
        3,
        tmp_path / "grid",
        lrs=lrs,
        steps=60,
        batch_size=32,
        progress=False,
        device="cpu",
    )
    assert list(info["val"]) == [
        "cls lr=1e-05",
        "cls lr=0.1",
        "mean lr=1e-05",
        "mean lr=0.1",
        "cls+mean lr=1e-05",
        "cls+mean lr=0.1",
    ]
    assert info["head"] in ("cls lr=0.1", "cls+mean lr=0.1")
    assert info["val"][info["head"]] > 0.9
    assert info["val"]["mean lr=0.1"] < 0.6  # noise features stay at chance
    assert [g["lr_scale"] for g in heads.optim_groups()] == pytest.approx([lr * 32 / 256 for lr in lrs] * 3)
    assert (tmp_path / "grid" / "checkpoints" / "step_00000060.pt").exists()
    assert isinstance(heads, LinearHeads) and len(heads.heads) == 6 and best == list(info["val"]).index(info["head"])


def test_grid_heads_get_only_their_own_gradient():
    import torch
    import torch.nn.functional as F

    heads = LinearHeads(4, 3, lrs=[0.1, 0.2])
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    heads({"image": x, "label": y}, None)["loss"].backward()
    for (pooling, _), head in zip(heads.keys, heads.heads):
        alone = torch.nn.Linear(head.in_features, 3)
        alone.load_state_dict(head.state_dict())
        F.cross_entropy(alone(heads._inputs(x, pooling)), y).backward()
        torch.testing.assert_close(head.weight.grad, alone.weight.grad)
        torch.testing.assert_close(head.bias.grad, alone.bias.grad)

"""Metrics and bootstrap CIs against scikit-learn (synthetic predictions with a known structure)."""

import numpy as np
import pytest
from domainfm.evaluation.metrics import bootstrap_indices, confusion_matrices, evaluate_predictions, scores
from sklearn import metrics as skm


def _predictions(n: int, k: int, seed: int = 0, decimals: int | None = None):
    """Synthetic: labels and softmax scores that favour the true class, optionally rounded to create ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if decimals is not None:
        p = np.round(p, decimals)
        p /= p.sum(1, keepdims=True)
    return y, p


def _sk_auroc(y, p):
    if p.shape[1] == 2:
        return skm.roc_auc_score(y, p[:, 1])
    return skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=np.arange(p.shape[1]))


@pytest.mark.parametrize("k,decimals", [(2, None), (2, 1), (5, None), (5, 2)])
def test_point_metrics_match_sklearn(k, decimals):
    y, p = _predictions(300, k, seed=k, decimals=decimals)
    pred = p.argmax(1)
    got = scores(y, p)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["qwk"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=np.arange(k)))
    assert got["auroc"] == pytest.approx(_sk_auroc(y, p))
    np.testing.assert_array_equal(confusion_matrices(y, pred, k), skm.confusion_matrix(y, pred, labels=range(k)))


def test_class_missing_from_truth_follows_sklearn_conventions():
    y, p = _predictions(200, 4, seed=1)
    keep = y != 3  # class 3 never true, but still predicted sometimes
    y, p = y[keep], p[keep]
    pred = p.argmax(1)
    assert (pred == 3).any()
    got = scores(y, p)
    with pytest.warns(UserWarning):
        assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    per_class = [skm.roc_auc_score(y == c, p[:, c]) for c in range(3)]
    assert got["auroc"] == pytest.approx(np.mean(per_class))


def test_bootstrap_ci_equals_sklearn_on_the_same_resamples():
    y, p = _predictions(90, 3, seed=7)
    out = evaluate_predictions(y, p, n_boot=150, seed=3)
    idx = bootstrap_indices(90, 150, seed=3)
    assert all(len(np.unique(y[i])) == 3 for i in idx)
    reference = {
        "balanced_accuracy": [skm.balanced_accuracy_score(y[i], p[i].argmax(1)) for i in idx],
        "macro_f1": [skm.f1_score(y[i], p[i].argmax(1), average="macro") for i in idx],
        "auroc": [_sk_auroc(y[i], p[i]) for i in idx],
    }
    for name, values in reference.items():
        assert out["ci"][name] == pytest.approx(list(np.percentile(values, [2.5, 97.5])))
        low, high = out["ci"][name]
        assert low <= out["metrics"][name] <= high
    assert out["n"] == 90 and np.array(out["confusion_matrix"]).sum() == 90


def test_ci_narrows_with_more_samples():
    small = evaluate_predictions(*_predictions(60, 2, seed=2), n_boot=300)
    large = evaluate_predictions(*_predictions(2000, 2, seed=2), n_boot=300)
    width = lambda r: r["ci"]["auroc"][1] - r["ci"]["auroc"][0]
    assert width(large) < width(small) / 2


def test_auroc_undefined_with_one_class_is_none():
    y = np.zeros(20, dtype=int)
    p = np.tile([0.7, 0.3], (20, 1))
    out = evaluate_predictions(y, p, n_boot=50)
    assert out["metrics"]["auroc"] is None and out["ci"]["auroc"] == [None, None]
    assert out["metrics"]["accuracy"] == 1.0

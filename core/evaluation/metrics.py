"""Classification metrics with percentile-bootstrap 95% confidence intervals.

Accuracy, balanced accuracy, macro F1 and quadratic weighted kappa come from the confusion matrix; AUROC from
the Mann-Whitney rank statistic (binary: score of class 1; more classes: macro one-vs-rest over the classes
that have positives and negatives). All of them take a leading batch axis, so the ``n_boot`` bootstrap
resamples are scored in a few vectorised passes instead of ``n_boot`` calls per metric; the tests check every
value against scikit-learn. Conventions follow scikit-learn: balanced accuracy averages recall over the classes
present in ``y_true``; macro F1 averages over the classes present in ``y_true`` or the predictions; kappa uses
all ``n_classes`` labels in their order (ordinal grades) with weights ``(i - j)^2``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.stats import rankdata

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "qwk")
LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "bal. acc",
    "macro_f1": "macro F1",
    "auroc": "AUROC",
    "qwk": "QWK",
}


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(..., K, K)`` counts, rows = true class, columns = predicted class, for ``(..., N)`` label arrays."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    lead = y_true.shape[:-1]
    offset = np.arange(int(np.prod(lead, dtype=np.int64))).reshape(*lead, 1) * n_classes * n_classes
    flat = (offset + y_true * n_classes + y_pred).ravel()
    counts = np.bincount(flat, minlength=max(1, offset.size) * n_classes * n_classes)
    return counts.reshape(*lead, n_classes, n_classes)


def confusion_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro F1 and quadratic weighted kappa of ``(..., K, K)`` confusion matrices."""
    cm = cm.astype(np.float64)
    k = cm.shape[-1]
    n = cm.sum((-2, -1))
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    true_counts, pred_counts = cm.sum(-1), cm.sum(-2)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        recall = diag / true_counts
        balanced = np.nanmean(np.where(true_counts > 0, recall, np.nan), axis=-1)
        support = true_counts + pred_counts
        f1 = np.where(support > 0, 2 * diag / support, 0.0)
        macro_f1 = f1.sum(-1) / (support > 0).sum(-1)
        weights = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2.0
        expected = true_counts[..., :, None] * pred_counts[..., None, :] / n[..., None, None]
        qwk = 1.0 - (weights * cm).sum((-2, -1)) / (weights * expected).sum((-2, -1))
        accuracy = diag.sum(-1) / n
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "macro_f1": macro_f1, "qwk": qwk}


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Area under the ROC curve along the last axis (ties count one half); NaN without both classes."""
    positive = np.asarray(positive, dtype=bool)
    ranks = rankdata(scores, axis=-1)
    n_pos = positive.sum(-1).astype(np.float64)
    n_neg = positive.shape[-1] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * positive).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def auroc(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Binary AUROC of ``probs[..., 1]``, or macro one-vs-rest AUROC over the classes with positives and negatives.

    ``y_true``: ``(..., N)``; ``probs``: ``(..., N, K)``.
    """
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    k = probs.shape[-1]
    if k == 2:
        return binary_auroc(y_true == 1, probs[..., 1])
    per_class = np.stack([binary_auroc(y_true == c, probs[..., c]) for c in range(k)], axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: AUROC undefined
        return np.nanmean(per_class, axis=-1)


def scores(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """All metrics of ``METRICS`` (arrays with the leading shape of ``y_true`` minus its last axis)."""
    probs = np.asarray(probs, dtype=np.float64)
    cm = confusion_matrices(y_true, probs.argmax(-1), probs.shape[-1])
    out: dict[str, Any] = confusion_scores(cm)
    out["auroc"] = auroc(y_true, probs)
    return out


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` resample indices (with replacement) from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def evaluate_predictions(
    y_true: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Point metrics, percentile-bootstrap CIs (``level``), confusion matrix and size of one test set.

    Returns ``{"n", "metrics": {name: value}, "ci": {name: [low, high]}, "confusion_matrix": K x K list}``;
    a metric that is undefined (e.g. AUROC with one class) is ``None``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    point = {m: _num(v) for m, v in scores(y_true, probs).items()}
    ci: dict[str, list[float | None]] = {m: [None, None] for m in METRICS}
    if n_boot > 0 and n > 1:
        idx = bootstrap_indices(n, n_boot, seed)
        chunk = max(1, int(2e7 // max(1, n * k)))
        parts = [scores(y_true[idx[i : i + chunk]], probs[idx[i : i + chunk]]) for i in range(0, n_boot, chunk)]
        tail = (1.0 - level) / 2 * 100
        for m in METRICS:
            values = np.concatenate([p[m] for p in parts])
            values = values[np.isfinite(values)]
            if len(values):
                ci[m] = [float(v) for v in np.percentile(values, [tail, 100 - tail])]
    cm = confusion_matrices(y_true, probs.argmax(-1), k)
    return {"n": int(n), "metrics": {m: point[m] for m in METRICS}, "ci": ci, "confusion_matrix": cm.tolist()}


def _num(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None

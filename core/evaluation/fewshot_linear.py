"""Few-shot logistic regression and retrieval mAP@k on frozen embeddings (MADELEINE's slide protocols; any
features work).

``fewshot_lr`` (MADELEINE ``bin/run_linear_probing.py``): for each ``k`` (1, 10, 25 slides per class) and each of
``folds`` (10) folds seeded by the fold number, ``k`` training samples of every class are drawn from the train
split, scikit-learn ``LogisticRegression(C=1, max_iter=10000)`` (lbfgs, L2, no feature standardisation) is fitted
on them and scored on the test split (MADELEINE tests on every remaining slide; here the test split, so results stay
comparable across protocols): AUROC (binary: class 1; more classes: macro one-vs-rest) and balanced accuracy,
mean and standard deviation over the folds. A ``k`` larger than the smallest class of the train split is left out.

``retrieval_map``: each test sample queries the train and val samples by cosine similarity; ``AP@k = (1 / min(k,
R)) sum_{i <= k} P@i rel_i`` with ``R`` the database samples of the query's class (so a perfect top-k scores 1
even when ``R < k``), averaged over the queries (mAP@k) for ``k`` in 1, 5, 10, plus the majority vote of the top
``k`` as accuracy (mMV@k, the slide-retrieval papers' second number).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from domainfm.evaluation.metrics import auroc, confusion_matrices, confusion_scores

SHOTS = (1, 10, 25)


def fewshot_logistic(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
    shots: Sequence[int] = SHOTS,
    folds: int = 10,
    C: float = 1.0,
    max_iter: int = 10000,
) -> tuple[dict[int, dict[str, list[float]]], list[int]]:
    """``({k: {"auroc": [mean, std], "balanced_accuracy": [mean, std]}}, skipped ks)``."""
    from sklearn.linear_model import LogisticRegression

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    smallest = min(int((train_y == c).sum()) for c in range(n_classes))
    out: dict[int, dict[str, list[float]]] = {}
    skipped = []
    for k in shots:
        if k > smallest:
            skipped.append(int(k))
            continue
        values: dict[str, list[float]] = {"auroc": [], "balanced_accuracy": []}
        for fold in range(folds):
            rng = np.random.default_rng(fold)
            pick = np.concatenate(
                [rng.choice(np.flatnonzero(train_y == c), k, replace=False) for c in range(n_classes)]
            )
            model = LogisticRegression(C=C, max_iter=max_iter, random_state=0).fit(train_x[pick], train_y[pick])
            probs = np.zeros((len(test_x), n_classes))
            probs[:, model.classes_] = model.predict_proba(test_x)
            values["auroc"].append(float(auroc(test_y, probs)))
            cm = confusion_matrices(test_y, probs.argmax(1), n_classes)
            values["balanced_accuracy"].append(float(confusion_scores(cm)["balanced_accuracy"]))
        out[int(k)] = {m: [float(np.mean(v)), float(np.std(v))] for m, v in values.items()}
    return out, skipped


def retrieval_map(
    db_x: np.ndarray, db_y: np.ndarray, query_x: np.ndarray, query_y: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, dict[str, list[float]]]:
    """``{k: {"map": [mean, std], "mmv": [mean, std]}}`` over the queries, of cosine retrieval of ``query_x`` in
    ``db_x``."""
    db = db_x / np.maximum(np.linalg.norm(db_x, axis=1, keepdims=True), 1e-12)
    q = query_x / np.maximum(np.linalg.norm(query_x, axis=1, keepdims=True), 1e-12)
    order = np.argsort(-(q @ db.T), axis=1, kind="stable")
    db_y, query_y = np.asarray(db_y), np.asarray(query_y)
    rel = db_y[order] == query_y[:, None]
    relevant = (db_y[None, :] == query_y[:, None]).sum(1)
    n_classes = int(max(db_y.max(), query_y.max())) + 1
    out = {}
    for k in ks:
        k = min(int(k), db.shape[0])
        hits = rel[:, :k]
        precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
        ap = (precision * hits).sum(1) / np.maximum(np.minimum(k, relevant), 1)
        votes = np.stack([np.bincount(row, minlength=n_classes) for row in db_y[order[:, :k]]])
        hit = (votes.argmax(1) == query_y).astype(np.float64)  # ties: the lowest class index
        out[k] = {"map": [float(ap.mean()), float(ap.std())], "mmv": [float(hit.mean()), float(hit.std())]}
    return out

"""Few-shot logistic regression (MADELEINE's protocol) against scikit-learn's metrics; retrieval mAP@k by hand."""

from __future__ import annotations

import numpy as np
import pytest
from domainfm.evaluation.fewshot_linear import fewshot_logistic, retrieval_map
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score


def test_fewshot_logistic_follows_the_protocol():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    x = rng.normal(size=(90, 5)) + np.eye(3, 5)[y] * 1.5
    tr, te = np.arange(0, 90, 2), np.arange(1, 90, 2)
    per_k, skipped = fewshot_logistic(x[tr], y[tr], x[te], y[te], 3, shots=(1, 10, 25), folds=4)
    assert skipped == [25] and sorted(per_k) == [1, 10]  # 15 training samples per class: k=25 left out
    for k in (1, 10):
        aucs, bals = [], []
        for fold in range(4):
            r = np.random.default_rng(fold)
            pick = np.concatenate([r.choice(np.flatnonzero(y[tr] == c), k, replace=False) for c in range(3)])
            m = LogisticRegression(C=1.0, max_iter=10000, random_state=0).fit(x[tr][pick], y[tr][pick])
            p = m.predict_proba(x[te])
            aucs.append(roc_auc_score(y[te], p, multi_class="ovr", average="macro"))
            bals.append(balanced_accuracy_score(y[te], p.argmax(1)))
        assert per_k[k]["auroc"] == pytest.approx([np.mean(aucs), np.std(aucs)], abs=1e-9)
        assert per_k[k]["balanced_accuracy"] == pytest.approx([np.mean(bals), np.std(bals)], abs=1e-9)
    assert per_k[10]["auroc"][0] > per_k[1]["auroc"][0] > 0.6  # more shots, better; far above chance


def test_retrieval_map_by_hand():
    db = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    db_y = np.array([0, 1, 1, 1, 0])
    q = np.array([[1.0, 0.05]])
    out = retrieval_map(db, db_y, q, np.array([0]), ks=(1, 3))
    # cosine order for q: db0 (0), db1 (1), db4 (0), db3 (1), db2 (1)
    assert out[1]["map"][0] == pytest.approx(1.0)
    # top 3 relevance 1, 0, 1: (1/1 + 2/3) / min(3, R=2)
    assert out[3]["map"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert out[3]["mmv"][0] == 1.0  # two of three are class 0
    out = retrieval_map(db, db_y, np.array([[0.0, 1.0]]), np.array([0]), ks=(2,))
    assert out[2]["map"][0] == 0.0 and out[2]["mmv"][0] == 0.0  # db2, db3: both class 1

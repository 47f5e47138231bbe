"""Weighted k-nearest-neighbour classification on frozen features.

Defaults: ``k=20``, cosine similarity after subtracting the mean of the training features and L2
normalisation (UNI, ``uni/downstream/eval_patch_features/fewshot.py: eval_knn``: ``center_feats``,
``normalize_feats``, ``n_neighbors=20``), and the temperature-weighted vote of Wu et al. 2018 / DINO
(Caron et al. 2021, ``eval_knn.py``): each of the ``k`` neighbours votes for its class with weight
``exp(similarity / T)``, ``T = 0.07``. Class scores are the normalised votes, so they serve as probabilities
for AUROC. Ties in similarity are broken by the lower training index.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    center: bool = True,
    normalize: bool = True,
    chunk: int | None = None,
) -> np.ndarray:
    """``(N_test, n_classes)`` vote shares of the ``k`` most similar training samples (``k`` is capped at the
    training set size)."""
    train = torch.as_tensor(np.asarray(train_x), dtype=torch.float32)
    test = torch.as_tensor(np.asarray(test_x), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    if center:
        offset = train.mean(0, keepdim=True)
        train, test = train - offset, test - offset
    if normalize:
        train, test = F.normalize(train, dim=-1), F.normalize(test, dim=-1)
    k = min(k, len(train))
    chunk = chunk or max(1, int(2**24 // max(1, len(train))))  # ~64 MB of similarities at a time
    out = []
    for i in range(0, len(test), chunk):
        sim = test[i : i + chunk] @ train.T
        top, idx = sim.topk(k, dim=1)
        weights = (top / temperature).exp()
        votes = torch.zeros(len(sim), n_classes).scatter_add_(1, labels[idx], weights)
        out.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, n_classes))

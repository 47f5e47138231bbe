"""SimpleShot few-shot evaluation (Wang et al. 2019) over N-way K-shot episodes.

As UNI's ``eval_patch_features/fewshot.py: eval_fewshot`` (after lgssl): per episode, draw ``K`` support samples
of each of ``N`` classes from the training split, subtract the support mean and L2-normalise support and query
features ("CL2N"), average each class's support into a prototype and assign each query to the nearest
prototype (Euclidean). Queries are all test samples of the episode's classes. Defaults: ``N`` = all classes,
``K`` in {1, 2, 4, 8, 16}, 100 episodes per ``K`` (UNI: 1,000), reported as mean and standard deviation over
episodes of accuracy, balanced accuracy and macro F1. A ``K`` larger than the training samples of too many
classes is left out (and named in the result).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from domainfm.evaluation.metrics import confusion_matrices, confusion_scores

SHOTS = (1, 2, 4, 8, 16)
EPISODE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def simpleshot_predict(
    support_x: np.ndarray,
    support_y: np.ndarray,
    query_x: np.ndarray,
    n_classes: int,
    center: bool = True,
    normalize: bool = True,
) -> np.ndarray:
    """Nearest-prototype labels (``0 .. n_classes-1``, every class must be in ``support_y``)."""
    s, q = np.asarray(support_x, dtype=np.float64), np.asarray(query_x, dtype=np.float64)
    if center:
        mean = s.mean(0, keepdims=True)
        s, q = s - mean, q - mean
    if normalize:
        s = s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    protos = np.stack([s[support_y == c].mean(0) for c in range(n_classes)])
    dist = (q**2).sum(1)[:, None] - 2 * q @ protos.T + (protos**2).sum(1)[None]
    return dist.argmin(1)


def sample_episode(
    train_y: np.ndarray, n_way: int, k_shot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(classes, support indices)`` of one episode (``k_shot`` per class, grouped by class in ``classes``
    order), or None when fewer than ``n_way`` classes have ``k_shot`` training samples."""
    eligible = [c for c in np.unique(train_y) if (train_y == c).sum() >= k_shot]
    if len(eligible) < n_way:
        return None
    classes = np.sort(rng.choice(eligible, n_way, replace=False))
    support = np.concatenate([rng.choice(np.flatnonzero(train_y == c), k_shot, replace=False) for c in classes])
    return classes, support


def fewshot(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    shots: Sequence[int] = SHOTS,
    episodes: int = 100,
    n_way: int | None = None,
    seed: int = 0,
) -> tuple[dict[int, dict[str, list[float]]], list[int]]:
    """``({K: {metric: [mean, std]}}, skipped Ks)`` over ``episodes`` SimpleShot episodes per ``K``."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    n_way = n_way or len(np.unique(train_y))
    rng = np.random.default_rng(seed)
    out: dict[int, dict[str, list[float]]] = {}
    skipped = []
    for k in shots:
        values: dict[str, list[float]] = {m: [] for m in EPISODE_METRICS}
        for _ in range(episodes):
            episode = sample_episode(train_y, n_way, k, rng)
            if episode is None:
                break
            classes, support = episode
            query = np.flatnonzero(np.isin(test_y, classes))
            if len(query) == 0:
                continue
            local = {c: i for i, c in enumerate(classes)}
            support_y = np.repeat(np.arange(n_way), k)
            pred = simpleshot_predict(train_x[support], support_y, test_x[query], n_way)
            truth = np.array([local[c] for c in test_y[query]])
            episode_scores = confusion_scores(confusion_matrices(truth, pred, n_way))
            for m in EPISODE_METRICS:
                values[m].append(float(episode_scores[m]))
        if not values["accuracy"]:
            skipped.append(int(k))
            continue
        out[int(k)] = {m: [float(np.mean(v)), float(np.std(v))] for m, v in values.items()}
    return out, skipped

"""Deepfake / anti-spoofing scores: EER and video-level aggregation as FSFM reports them
(``fsfm-3c/util/metrics.py``): a video's score is the mean of its frames' scores, its label its first frame's;
EER is where the false-positive rate equals the false-negative rate on the ROC curve (linear interpolation).

Anti-spoofing's HTER as FSFM's cross-domain FAS code computes it (``fsfm-3c/finuetune/cross_domain_FAS/utils/
statistic.py``, ``evaluate.py``): the bona fide class (real / live) is positive, a sample is accepted when its score
(P(bona fide)) is ``>= thr``; FAR = attacks accepted / attacks, FRR = bona fide rejected / bona fide, HTER = (FAR +
FRR) / 2 at the threshold ``get_EER_states`` picks on the scored set itself (thresholds ``0, 1e-4, ..., 1, 1.1``, the
last one minimising ``|FRR - FAR|``); TPR at FPR = 1 % from the ROC curve (the largest TPR with FPR <= 1 %, else 0).
The threshold is read off the test set, as published; ``hter(..., thr=0.5)`` is the model's own decision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def eer(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Equal error rate (fraction) of ``scores`` for binary ``labels`` (1 = positive)."""
    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(scores, dtype=np.float64))
    fnr = 1.0 - tpr
    diff = fpr - fnr  # rises from -1 to +1 along the curve
    i = int(np.flatnonzero(diff >= 0)[0])
    if i == 0 or diff[i] == 0:
        return float(fpr[i])
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def video_level(
    videos: Sequence[str], labels: Sequence[int], scores: Sequence[float]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(video ids, labels, mean frame score)`` per video, in first-seen order."""
    order: dict[str, list[int]] = {}
    for i, v in enumerate(videos):
        order.setdefault(str(v), []).append(i)
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    ids = list(order)
    return ids, np.array([labels[order[v][0]] for v in ids]), np.array([scores[order[v]].mean() for v in ids])


def frame_and_video_scores(videos: Sequence[str], labels: Sequence[int], scores: Sequence[float]) -> dict[str, float]:
    """Frame AUC / EER and video AUC / EER."""
    _, v_labels, v_scores = video_level(videos, labels, scores)
    return {
        "frame_auc": float(roc_auc_score(labels, scores)),
        "frame_eer": eer(labels, scores),
        "video_auc": float(roc_auc_score(v_labels, v_scores)),
        "video_eer": eer(v_labels, v_scores),
    }


BONA_FIDE = ("real", "live", "bonafide", "bona_fide", "genuine")


def bona_fide_index(classes: Sequence[str]) -> int:
    """The positive class of FAS metrics: the one named real / live / bona fide, else the second."""
    for i, name in enumerate(classes):
        if str(name).lower() in BONA_FIDE:
            return i
    return 1


def _errors(labels: np.ndarray, scores: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(FAR, FRR)`` at each threshold (accept when ``score >= thr``), FSFM's conventions when a class is absent."""
    pos, neg = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    rejected = np.searchsorted(pos, thr, side="left")  # bona fide below the threshold
    accepted = len(neg) - np.searchsorted(neg, thr, side="left")  # attacks at or above it
    far = accepted / len(neg) if len(neg) else np.ones_like(thr, dtype=float)
    frr = rejected / len(pos) if len(pos) else np.ones_like(thr, dtype=float)
    return np.asarray(far, dtype=float), np.asarray(frr, dtype=float)


def eer_threshold(labels: Sequence[int], scores: Sequence[float], grid: int = 10000) -> tuple[float, float]:
    """FSFM's ``get_EER_states``: ``(EER, threshold)`` over the grid ``0 .. 1`` in ``1 / grid`` steps and 1.1."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    thresholds = np.append(np.arange(grid + 1) / grid, 1.1)
    far, frr = _errors(labels, scores, thresholds)
    dist = np.abs(frr - far)
    i = int(np.flatnonzero(dist == dist.min())[-1])  # `dist <= min_dist` keeps the last minimum
    return float((far[i] + frr[i]) / 2), float(thresholds[i])


def hter(labels: Sequence[int], scores: Sequence[float], thr: float | None = None) -> float:
    """Half total error rate at ``thr`` (default: the set's own EER threshold, as FSFM reports it)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    thr = eer_threshold(labels, scores)[1] if thr is None else thr
    far, frr = _errors(labels, scores, np.array([thr]))
    return float((far[0] + frr[0]) / 2)


def tpr_at_fpr(labels: Sequence[int], scores: Sequence[float], fpr: float = 0.01) -> float:
    """The largest TPR with FPR <= ``fpr`` on the ROC curve (0 if none), as FSFM's ``TPR@FPR``."""
    f, t, _ = roc_curve(np.asarray(labels), np.asarray(scores, dtype=np.float64))
    kept = t[f <= fpr]
    return float(kept[-1]) if len(kept) else 0.0


def fas_scores(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float]:
    """HTER (own EER threshold), HTER at 0.5, TPR at FPR 1 %, AUC; ``labels`` 1 = bona fide, ``scores`` P(bona fide)."""
    return {"hter": hter(labels, scores), "hter_at_0.5": hter(labels, scores, 0.5),
            "tpr_at_fpr_1pct": tpr_at_fpr(labels, scores), "auc": float(roc_auc_score(labels, scores))}  # fmt: skip

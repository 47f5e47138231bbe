"""Deepfake / anti-spoofing scores: EER and video-level aggregation as FSFM reports them
(``fsfm-3c/util/metrics.py``): a video's score is the mean of its frames' scores, its label its first frame's;
EER is where the false-positive rate equals the false-negative rate on the ROC curve (linear interpolation).
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

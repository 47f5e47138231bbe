"""Deepfake metrics against hand-worked values and FSFM's EER definition (brentq on the interpolated ROC)."""

from __future__ import annotations

import numpy as np
import pytest
from domainfm.face_security.metrics import eer, frame_and_video_scores, video_level
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve


def test_eer_by_hand_and_against_fsfm_definition():
    assert eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0  # separable
    assert eer([0, 1], [0.9, 0.1]) == 1.0  # inverted
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = labels * 0.8 + rng.normal(0, 1, 400)
    fpr, tpr, _ = roc_curve(labels, scores)
    fsfm = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)  # util/metrics.py
    assert eer(labels, scores) == pytest.approx(fsfm, abs=1e-9)


def test_video_score_is_the_mean_of_its_frames():
    videos = ["a", "a", "b", "b", "c"]
    ids, labels, scores = video_level(videos, [1, 1, 0, 0, 1], [0.9, 0.5, 0.4, 0.6, 0.2])
    assert ids == ["a", "b", "c"] and labels.tolist() == [1, 0, 1]
    np.testing.assert_allclose(scores, [0.7, 0.5, 0.2])
    out = frame_and_video_scores(videos, [1, 1, 0, 0, 1], [0.9, 0.5, 0.4, 0.6, 0.2])
    assert out["video_auc"] == pytest.approx(0.5)  # a (0.7) > b (0.5) > c (0.2): one of two positive pairs right
    assert out["frame_auc"] == pytest.approx(3 / 6)  # 0.9 beats both negatives, 0.5 beats 0.4, 0.2 none

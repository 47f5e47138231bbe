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


def _fsfm_eer_states(probs, labels, grid=10000):
    """fsfm-3c/finuetune/cross_domain_FAS/utils/statistic.py, loop for loop (eval_state, get_EER_states)."""
    best, states = 1.0, None
    for thr in [i / grid for i in range(grid + 1)] + [1.1]:
        pred = probs >= thr
        tn, fn = np.sum((labels == 0) & ~pred), np.sum((labels == 1) & ~pred)
        fp, tp = np.sum((labels == 0) & pred), np.sum((labels == 1) & pred)
        far = fp / float(fp + tn) if fp + tn else 1.0
        frr = fn / float(fn + tp) if fn + tp else 1.0
        if abs(frr - far) <= best:
            best, states = abs(frr - far), (far, frr, thr)
    return (states[0] + states[1]) / 2, states[2]


def test_hter_and_tpr_at_fpr_are_fsfms_fas_figures():
    from domainfm.face_security.metrics import bona_fide_index, eer_threshold, hter, tpr_at_fpr

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(0.5 + 0.25 * (2 * labels - 1) + rng.normal(0, 0.2, 300), 0, 1).round(3)  # ties on the grid
    ref_eer, ref_thr = _fsfm_eer_states(scores, labels, grid=1000)
    ours_eer, ours_thr = eer_threshold(labels, scores, grid=1000)
    assert ours_thr == pytest.approx(ref_thr) and ours_eer == pytest.approx(ref_eer, abs=1e-12)
    pred = scores >= ref_thr  # get_HTER_at_thr
    far = np.sum((labels == 0) & pred) / np.sum(labels == 0)
    frr = np.sum((labels == 1) & ~pred) / np.sum(labels == 1)
    assert hter(labels, scores, ref_thr) == pytest.approx((far + frr) / 2, abs=1e-12)
    # by hand: bona fide 0.9, 0.6, 0.3; attacks 0.7, 0.2, 0.1. At 0.5: FAR 1/3, FRR 1/3 -> HTER 1/3
    y, s = np.array([1, 1, 1, 0, 0, 0]), np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1])
    assert hter(y, s, 0.5) == pytest.approx(1 / 3) and hter(y, s, 0.95) == pytest.approx(0.5)
    # TPR at FPR <= 1/3: down to 0.3 only the attack at 0.7 is accepted -> all 3 bona fide; at FPR 0: 0.9 only
    assert tpr_at_fpr(y, s, fpr=1 / 3) == pytest.approx(1.0) and tpr_at_fpr(y, s, fpr=0.0) == pytest.approx(1 / 3)
    assert bona_fide_index(["live", "spoof"]) == 0 and bona_fide_index(["fake", "real"]) == 1
    assert bona_fide_index(["a", "b"]) == 1
    assert hter([1, 1], [0.9, 0.2], 0.5) == pytest.approx((1.0 + 0.5) / 2)  # no attacks: FAR = 1 as FSFM


def test_antispoofing_rows_carry_hter_with_live_as_bona_fide(tmp_path):
    from domainfm.evaluation.results import ProtocolResult
    from domainfm.face_security.commands.deepfake import per_video
    from domainfm.face_security.metrics import hter

    ids = [f"f{i}" for i in range(8)]
    videos = dict(zip(ids, ["v0", "v0", "v1", "v1", "v2", "v2", "v3", "v3"]))
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # classes live, spoof: live = 0 is bona fide
    p_live = np.array([0.9, 0.7, 0.4, 0.8, 0.3, 0.6, 0.2, 0.1])
    probs = np.stack([p_live, 1 - p_live], 1)
    result = ProtocolResult.from_predictions("finetune", ["live", "spoof"], labels, probs, 10, 0, {"selected": "x"})

    class Test:  # the slice of a LabeledSet the hook reads
        pass

    test = Test()
    test.ids = ids
    (video_row,) = per_video(videos, 10, 0, antispoofing=True)("b", test, result, tmp_path)
    assert result.details["hter"] == pytest.approx(hter(labels == 0, p_live))
    assert result.details["hter_at_0.5"] == pytest.approx(hter(labels == 0, p_live, 0.5))
    # at 0.5: live accepted 0.9, 0.7, 0.8, rejected 0.4 -> FRR 1/4; spoofs accepted 0.6 -> FAR 1/4
    assert result.details["hter_at_0.5"] == pytest.approx(0.25)
    v_live = np.array([0.8, 0.6, 0.45, 0.15])  # video means, bona fide v0, v1
    assert video_row.details["hter_at_0.5"] == pytest.approx(hter([1, 1, 0, 0], v_live, 0.5)) == 0.0
    assert "HTER" in video_row.details["selected"] and "tpr_at_fpr_1pct" in video_row.details

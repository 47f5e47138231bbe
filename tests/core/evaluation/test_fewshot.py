"""SimpleShot against a brute-force numpy computation on real image features; episode bookkeeping."""

import numpy as np
import pytest
from domainfm.evaluation.fewshot import fewshot, sample_episode, simpleshot_predict
from sklearn.metrics import balanced_accuracy_score


def _brute_force(support_x, support_y, query_x, n_classes):
    mean = support_x.mean(0)
    unit = lambda v: (v - mean) / np.linalg.norm(v - mean)
    s = np.array([unit(v) for v in support_x])
    protos = [s[support_y == c].mean(0) for c in range(n_classes)]
    return np.array([np.argmin([np.linalg.norm(unit(q) - p) for p in protos]) for q in query_x])


def _split(y):
    rank = np.array([np.sum(y[:i] == y[i]) for i in range(len(y))])
    return rank < 6, rank >= 6  # 6 train and 4 test images per class


def test_simpleshot_matches_brute_force(eurosat_pixels):
    x, y = eurosat_pixels
    train, test = _split(y)
    classes, support = sample_episode(y[train], 10, 3, np.random.default_rng(0))
    assert len(support) == 30 and list(classes) == list(range(10))
    support_y = np.repeat(np.arange(10), 3)
    assert (y[train][support] == support_y).all()
    got = simpleshot_predict(x[train][support], support_y, x[test], 10)
    np.testing.assert_array_equal(got, _brute_force(x[train][support], support_y, x[test], 10))


def test_fewshot_mean_std_over_replayed_episodes(eurosat_pixels):
    x, y = eurosat_pixels
    train, test = _split(y)
    out, skipped = fewshot(x[train], y[train], x[test], y[test], shots=[4], episodes=12, seed=5)
    rng = np.random.default_rng(5)
    values = []
    for _ in range(12):
        _, support = sample_episode(y[train], 10, 4, rng)
        pred = simpleshot_predict(x[train][support], np.repeat(np.arange(10), 4), x[test], 10)
        values.append(balanced_accuracy_score(y[test], pred))
    assert skipped == []
    assert out[4]["balanced_accuracy"] == pytest.approx([np.mean(values), np.std(values)])
    assert out[4]["balanced_accuracy"][1] > 0  # episodes differ


def test_fewshot_leaves_out_k_beyond_the_training_samples_and_samples_n_way(eurosat_pixels):
    x, y = eurosat_pixels
    train, test = _split(y)
    out, skipped = fewshot(x[train], y[train], x[test], y[test], shots=[1, 2, 8], episodes=20, n_way=3)
    assert sorted(out) == [1, 2] and skipped == [8]
    assert set(out[2]) == {"accuracy", "balanced_accuracy", "macro_f1"}
    all_way, _ = fewshot(x[train], y[train], x[test], y[test], shots=[2], episodes=20)
    assert out[2]["accuracy"][0] > all_way[2]["accuracy"][0] + 0.1  # 3-way episodes are easier than 10-way

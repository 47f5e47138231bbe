"""kNN against a brute-force numpy computation on real image features."""

import numpy as np
import pytest
from domainfm.evaluation.knn import knn_predict


def _brute_force(train_x, train_y, test_x, n_classes, k, temperature, center=True):
    if center:
        mean = train_x.mean(0)
        train_x, test_x = train_x - mean, test_x - mean
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    out = np.zeros((len(b), n_classes))
    for i, q in enumerate(b):
        sims = np.array([q @ t for t in a])
        for j in np.argsort(-sims, kind="stable")[:k]:
            out[i, train_y[j]] += np.exp(sims[j] / temperature)
        out[i] /= out[i].sum()
    return out


@pytest.mark.parametrize("k,temperature,center", [(20, 0.07, True), (5, 0.5, False), (500, 0.07, True)])
def test_knn_matches_brute_force(eurosat_pixels, k, temperature, center):
    x, y = eurosat_pixels
    train, test = np.arange(len(y)) % 4 != 0, np.arange(len(y)) % 4 == 0
    got = knn_predict(x[train], y[train], x[test], 10, k=k, temperature=temperature, center=center)
    want = _brute_force(x[train], y[train], x[test], 10, min(k, train.sum()), temperature, center)
    assert got.shape == (test.sum(), 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_knn_chunks_give_the_same_votes(eurosat_pixels):
    x, y = eurosat_pixels
    whole = knn_predict(x[:70], y[:70], x[70:], 10)
    chunked = knn_predict(x[:70], y[:70], x[70:], 10, chunk=7)
    np.testing.assert_allclose(whole, chunked, atol=1e-5)

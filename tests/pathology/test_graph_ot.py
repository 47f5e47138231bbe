"""Graph-OT (MADELEINE's local loss) against POT and an independent NumPy transcription of the official math."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from domainfm.pathology.graph_ot import (
    cosine_cost,
    graph_ot,
    gromov_wasserstein,
    gw_cost,
    ipot,
    subsample_tokens,
    thresholded_cosine_cost,
    wasserstein,
)


def official_ipot(c: torch.Tensor, beta: float, iters: int) -> torch.Tensor:
    """The official ``IPOT_torch_batch_uniform`` for one sample ``(n, m)``, op by op (differentiable)."""
    n, m = c.shape
    sigma, t, a = torch.ones(m, 1, dtype=c.dtype) / m, torch.ones(n, m, dtype=c.dtype), torch.exp(-c / beta)
    for _ in range(iters):
        q = a * t
        delta = 1 / (n * q @ sigma)
        sigma = 1 / (m * q.T @ delta)
        t = delta * q * sigma.T
    return t


def np_ipot(c: np.ndarray, beta: float, iters: int) -> np.ndarray:
    return official_ipot(torch.from_numpy(np.asarray(c, dtype=np.float64)), beta, iters).numpy()


def np_thresholded(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xn = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    yn = y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-12)
    c = 1 - xn @ yn.T
    return np.maximum(c - (c.min() + 0.1 * (c.max() - c.min())), 0)


def np_got(x: np.ndarray, y: np.ndarray) -> float:
    """The official ``GOT`` for a batch of one (where batch-wide and per-sample thresholds agree)."""
    c = np_thresholded(x, y)
    w = float((c * np_ipot(c, 0.5, 30)).sum())
    cs, ct = np_thresholded(x, x), np_thresholded(y, y)
    n, m = len(x), len(y)
    p, q = np.ones((n, 1)) / n, np.ones((m, 1)) / m
    cst = (cs**2) @ p @ np.ones((1, m)) + np.ones((n, 1)) @ q.T @ (ct**2).T
    gamma = p @ q.T
    for _ in range(5):
        gamma = np_ipot(cst - 2 * cs @ gamma @ ct.T, 0.1, 20)
    c_gamma = cst - 2 * cs @ gamma @ ct.T
    return w + float((c_gamma * gamma).sum())


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("n,m", [(6, 6), (5, 9)])
def test_ipot_converges_to_the_exact_transport_cost(n, m):
    c = _rand(1, n, m).abs()
    plan = ipot(c, beta=0.5, iters=3000)[0].numpy()
    exact = ot.emd2(np.ones(n) / n, np.ones(m) / m, c[0].numpy())  # the LP
    assert float((c[0].numpy() * plan).sum()) == pytest.approx(exact, abs=1e-6)
    np.testing.assert_allclose(plan.sum(0), 1 / m, atol=1e-12)  # the last update fixes the columns exactly
    np.testing.assert_allclose(plan.sum(1), 1 / n, atol=1e-6)


def test_ipot_and_wasserstein_follow_the_official_iteration():
    c = _rand(3, 7, 5).abs()
    plans = ipot(c, 0.5, 30).numpy()
    for b in range(3):
        np.testing.assert_allclose(plans[b], np_ipot(c[b].numpy(), 0.5, 30), rtol=1e-10)
    w = wasserstein(c, 0.5, 30).numpy()
    np.testing.assert_allclose(w, [(c[b].numpy() * np_ipot(c[b].numpy(), 0.5, 30)).sum() for b in range(3)])


def test_gromov_wasserstein_objective_is_pots_square_loss_and_solves_it():
    for seed in range(3):
        x, y = _rand(1, 10, 5, seed=seed), _rand(1, 12, 5, seed=seed + 10)
        cs, ct = thresholded_cosine_cost(x, x), thresholded_cosine_cost(y, y)
        p, q = np.ones(10) / 10, np.ones(12) / 12
        const, h1, h2 = ot.gromov.init_matrix(cs[0].numpy(), ct[0].numpy(), p, q, "square_loss")
        gamma = torch.rand(1, 10, 12, dtype=torch.float64)
        # our linearised cost = POT's tensor product for the square loss, for any plan
        np.testing.assert_allclose(
            gw_cost(cs, ct, gamma)[0].numpy(), ot.gromov.tensor_product(const, h1, h2, gamma[0].numpy())
        )
        value, plan = gromov_wasserstein(cs, ct)
        assert value.item() == pytest.approx(ot.gromov.gwloss(const, h1, h2, plan[0].numpy()), rel=1e-10)
        product = ot.gromov.gwloss(const, h1, h2, np.outer(p, q))
        pot = ot.gromov.gromov_wasserstein2(cs[0].numpy(), ct[0].numpy(), p, q, loss_fun="square_loss")
        assert value.item() < 0.5 * product  # far below the independent coupling it starts from
        assert value.item() < 1.2 * pot  # as good as POT's conditional-gradient solver (both local optima)


def test_gromov_wasserstein_of_a_permuted_copy_is_zero():
    x = _rand(1, 8, 4, seed=3)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    y = x[:, perm]
    value, plan = gromov_wasserstein(thresholded_cosine_cost(x, x), thresholded_cosine_cost(y, y), 0.1, 50, 50)
    assert value.item() < 1e-6
    assert torch.equal(plan[0].argmax(dim=1), perm.argsort())  # x_i is sent to its copy y_{perm^-1(i)}


def test_got_equals_the_official_math_and_thresholds_are_per_sample():
    x, y = _rand(3, 9, 6, seed=1), _rand(3, 9, 6, seed=2)
    got = graph_ot(x, y).numpy()
    np.testing.assert_allclose(got, [np_got(x[b].numpy(), y[b].numpy()) for b in range(3)], rtol=1e-5)
    # per sample: each slide's loss is the loss it has alone in a batch (the official batch-wide min/max is not)
    alone = graph_ot(x[1:2] * 3.0, y[1:2]).numpy()
    np.testing.assert_allclose(alone, got[1], rtol=1e-5)  # cosine cost: invariant to the scale of the tokens
    c = thresholded_cosine_cost(x, y)
    assert torch.all(c.amin(dim=(1, 2)) == 0) and torch.all(c <= cosine_cost(x, y))


def test_got_is_differentiable_and_smaller_for_aligned_tokens():
    x = _rand(2, 16, 8, seed=4).float().requires_grad_(True)
    aligned = graph_ot(x, x.detach()[:, torch.randperm(16)] + 0.01)
    random = graph_ot(x, _rand(2, 16, 8, seed=5).float())
    assert torch.all(aligned < random)
    random.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def torch_official_got(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The official ``GOT`` (``madeleine/utils/loss.py``) for a batch of one, transcribed op by op in torch with its
    detach: ``GW_torch_batch`` returns ``gamma.detach()`` next to the undetached ``Cgamma``."""

    def thresholded(a, b):
        an, bn = a / (a.norm(dim=1, keepdim=True) + 1e-12), b / (b.norm(dim=1, keepdim=True) + 1e-12)
        c = 1 - an @ bn.T
        return torch.relu(c - (c.min() + 0.1 * (c.max() - c.min())))

    c = thresholded(x, y)
    wd = torch.trace(c.T @ official_ipot(c, 0.5, 30))
    cs, ct = thresholded(x, x), thresholded(y, y)
    n, m = len(x), len(y)
    p, q = torch.ones(n, 1, dtype=x.dtype) / n, torch.ones(m, 1, dtype=x.dtype) / m
    cst = (cs**2) @ p @ torch.ones(1, m, dtype=x.dtype) + torch.ones(n, 1, dtype=x.dtype) @ q.T @ (ct**2).T
    gamma = p @ q.T
    for _ in range(5):
        gamma = official_ipot(cst - 2 * cs @ gamma @ ct.T, 0.1, 20)
    c_gamma = cst - 2 * cs @ gamma @ ct.T
    return wd + torch.trace(c_gamma.T @ gamma.detach())


def test_got_gradient_equals_the_official_one_with_its_detach():
    x, y = _rand(1, 7, 5, seed=6).requires_grad_(True), _rand(1, 7, 5, seed=7).requires_grad_(True)
    graph_ot(x, y).sum().backward()
    ox, oy = x.detach()[0].clone().requires_grad_(True), y.detach()[0].clone().requires_grad_(True)
    official = torch_official_got(ox, oy)
    official.backward()
    np.testing.assert_allclose(graph_ot(x, y).item(), official.item(), rtol=1e-5)
    # graph_ot computes in float32 (as the official .float()); the reference in float64
    np.testing.assert_allclose(x.grad[0].numpy(), ox.grad.numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(y.grad[0].numpy(), oy.grad.numpy(), rtol=1e-3, atol=1e-5)


def test_token_subsample_acts_on_tokens_per_sample():
    x = torch.arange(2 * 50 * 3, dtype=torch.float32).reshape(2, 50, 3)
    y = -x
    sx, sy = subsample_tokens(x, y, 16, torch.Generator().manual_seed(0))
    assert sx.shape == (2, 16, 3) and sy.shape == (2, 16, 3)
    for b in range(2):
        rows = (sx[b, :, 0] - x[b, 0, 0]).long() // 3  # which tokens of sample b were kept
        assert len(set(rows.tolist())) == 16 and rows.min() >= 0 and rows.max() < 50
        assert torch.equal(sy[b], -sx[b])  # the same positions in both stains
    assert not torch.equal((sx[0, :, 0] - x[0, 0, 0]), (sx[1, :, 0] - x[1, 0, 0]))  # own draw per sample
    same = subsample_tokens(x, y, 64)
    assert same[0] is x and same[1] is y

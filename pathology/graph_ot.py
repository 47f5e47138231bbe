"""Graph optimal transport between two sets of tokens (MADELEINE's local loss), batched, on any device.

MADELEINE (Jaume et al., ECCV 2024) aligns the patch tokens of an H&E slide with those of another stain of the same
tissue by Graph-OT (GOT, Chen et al. ICML 2020; code after VoLTA), as ``madeleine/utils/loss.py`` computes it
(checked at commit 419287d):

- cost ``C_ij = 1 - cos(x_i, y_j)`` (norms + 1e-12), then thresholded: ``C <- relu(C - (min C + 0.1 (max C -
  min C)))`` (:func:`thresholded_cosine_cost`);
- Wasserstein term ``W = sum_ij C_ij T_ij`` with ``T`` from IPOT (Xie et al. 2019, :func:`ipot`): uniform
  marginals ``1/n``, ``1/m``, ``A = exp(-C / beta)``, ``T = 1``, ``sigma = 1/m``; ``iters`` times: ``Q = A * T``,
  ``delta = 1 / (n Q sigma)``, ``sigma = 1 / (m Q^T delta)``, ``T = diag(delta) Q diag(sigma)``; beta 0.5,
  30 iterations;
- Gromov-Wasserstein term (:func:`gromov_wasserstein`) between the two graphs' intra-set costs ``Cs`` (x vs x),
  ``Ct`` (y vs y), each thresholded as above: ``Cst = (Cs^2 p) 1^T + 1 (q^T Ct^2^T)``, ``gamma = p q^T``; 5 times:
  ``C_gamma = Cst - 2 Cs gamma Ct^T``, ``gamma = IPOT(C_gamma, beta=0.1, 20 iterations)``; then
  ``GW = sum_ij C_gamma_ij gamma_ij`` with the last ``C_gamma`` (the square-loss GW tensor of Peyre et al. 2016,
  POT's ``tensor_product`` for ``loss_fun='square_loss'``);
- ``GOT = W + GW`` (both weight 1; the issue's "lambda 0.1" is GW's IPOT beta), summed over the batch.

Gradients flow through the costs and through the unrolled IPOT iterations, as in the official code, which detaches
one thing: the plan ``gamma`` that multiplies ``C_gamma`` in ``GW = sum C_gamma * gamma`` (``GW_torch_batch``
returns ``gamma.detach()``), so the GW gradient is ``sum dC_gamma * gamma``; ``C_gamma`` itself is built from the
undetached plan.

Deviations, each a bug of the official code: the min/max of the thresholds are taken per sample (the official code
takes them over the whole batch, so one slide's cost depends on the others in its batch); the token subsample
(256 tokens) acts on the token dimension with its own draw per sample (the official ``randperm(v_.shape[0])``
indexes tokens with a permutation of the *batch* size, so it keeps ``B`` tokens); divisions carry a 1e-30 floor
(IPOT has none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

THRESHOLD = 0.1  # fraction of the cost range cut off at the bottom (``beta = 0.1`` in the official helpers)


def cosine_cost(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``1 - cos(x_i, y_j)``: ``(B, n, d)``, ``(B, m, d)`` -> ``(B, n, m)``."""
    x = x / (x.norm(dim=-1, keepdim=True) + eps)
    y = y / (y.norm(dim=-1, keepdim=True) + eps)
    return 1 - x @ y.transpose(1, 2)


def thresholded_cosine_cost(x: torch.Tensor, y: torch.Tensor, factor: float = THRESHOLD) -> torch.Tensor:
    """:func:`cosine_cost` minus its per-sample ``min + factor * (max - min)``, clipped at 0."""
    c = cosine_cost(x, y)
    lo = c.amin(dim=(1, 2), keepdim=True)
    hi = c.amax(dim=(1, 2), keepdim=True)
    return F.relu(c - (lo + factor * (hi - lo)))


def ipot(cost: torch.Tensor, beta: float = 0.5, iters: int = 50) -> torch.Tensor:
    """IPOT transport plan ``(B, n, m)`` between uniform marginals for ``cost`` ``(B, n, m)`` (one Sinkhorn step
    per proximal iteration, as the official code)."""
    b, n, m = cost.shape
    a = torch.exp(-cost / beta)
    t = torch.ones_like(cost)
    sigma = cost.new_full((b, m, 1), 1.0 / m)
    for _ in range(iters):
        q = a * t
        delta = 1.0 / (n * (q @ sigma)).clamp_min(1e-30)
        sigma = 1.0 / (m * (q.transpose(1, 2) @ delta)).clamp_min(1e-30)
        t = delta * q * sigma.transpose(1, 2)
    return t


def wasserstein(cost: torch.Tensor, beta: float = 0.5, iters: int = 30) -> torch.Tensor:
    """``sum_ij C_ij T_ij`` per sample ``(B,)`` with the IPOT plan ``T`` of ``cost``."""
    return (cost * ipot(cost, beta, iters)).sum(dim=(1, 2))


def gw_cost(cs: torch.Tensor, ct: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The square-loss GW tensor contracted with ``gamma``: ``Cst - 2 Cs gamma Ct^T`` (uniform marginals)."""
    n, m = cs.shape[1], ct.shape[1]
    cst = (cs**2).mean(dim=2, keepdim=True) + (ct**2).mean(dim=2).unsqueeze(1)  # (Cs^2 p) 1^T + 1 (q^T Ct^2^T)
    assert cst.shape[1:] == (n, m)
    return cst - 2 * cs @ gamma @ ct.transpose(1, 2)


def gromov_wasserstein(
    cs: torch.Tensor, ct: torch.Tensor, beta: float = 0.1, outer: int = 5, inner: int = 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(GW distance (B,), plan (B, n, m))`` between graphs with intra-set costs ``cs`` ``(B, n, n)`` and ``ct``
    ``(B, m, m)``, uniform weights, ``outer`` linearisations each solved by IPOT (``beta``, ``inner``)."""
    b, n, m = cs.shape[0], cs.shape[1], ct.shape[1]
    gamma = cs.new_full((b, n, m), 1.0 / (n * m))
    for _ in range(outer):
        gamma = ipot(gw_cost(cs, ct, gamma), beta, inner)
    c_gamma = gw_cost(cs, ct, gamma)
    # the official GW_torch_batch returns gamma.detach(): the gradient reaches the plan only through C_gamma
    return (c_gamma * gamma.detach()).sum(dim=(1, 2)), gamma


def subsample_tokens(
    x: torch.Tensor, y: torch.Tensor, k: int | None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``k`` random token positions of ``x`` ``(B, N, d)`` and ``y`` ``(B, N, d)``, drawn per sample (the
    tokens of both stains are independent draws of their slides' patches, so a shared position pairs nothing)."""
    b, n = x.shape[:2]
    if k is None or k >= n:
        return x, y
    keys = torch.rand(b, n, generator=generator, device="cpu").to(x.device)
    idx = keys.argsort(dim=1)[:, :k]
    take = idx.unsqueeze(-1)
    return x.gather(1, take.expand(-1, -1, x.shape[2])), y.gather(1, take.expand(-1, -1, y.shape[2]))


def graph_ot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """GOT per sample ``(B,)``: Wasserstein (IPOT, beta 0.5, 30 iterations) + Gromov-Wasserstein (IPOT beta 0.1,
    5 x 20 iterations) between token sets ``x`` ``(B, n, d)`` and ``y`` ``(B, m, d)``."""
    x, y = x.float(), y.float()
    w = wasserstein(thresholded_cosine_cost(x, y), beta=0.5, iters=30)
    gw, _ = gromov_wasserstein(thresholded_cosine_cost(x, x), thresholded_cosine_cost(y, y), 0.1, 5, 20)
    return w + gw

"""Contrastive losses between two views.

NT-Xent / InfoNCE (Chen et al. 2020, "A Simple Framework for Contrastive Learning", SimCLR): with ``z`` the
L2-normalised projections of both views of all ``N`` samples (``2N`` rows; gathered from every process with
gradient), for each anchor ``i`` with positive ``j(i)`` (the other view of the same sample)::

    l_i = -log( exp(z_i . z_j(i) / tau) / sum_{k != i} exp(z_i . z_k / tau) ),   L = mean over the local anchors

MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers"): queries ``q``
from the online encoder + predictor, keys ``k`` from the momentum encoder (gathered, no gradient)::

    ctr(q, k) = 2 tau * CE( q k^T / tau, labels = own index ),   L = ctr(q1, k2) + ctr(q2, k1)

(``q``, ``k`` L2-normalised; tau = 0.2 for ViTs in the paper).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from domainfm.common.distributed import gather_with_grad, rank, world_size


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    out = [torch.zeros_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR NT-Xent over both views; negatives come from every process."""
    n = z1.shape[0]
    local = F.normalize(torch.cat([z1, z2]), dim=-1)  # [view1 ; view2], 2n rows
    everything = gather_with_grad(local)  # rank-major: [r0 v1, r0 v2, r1 v1, r1 v2, ...]
    logits = local @ everything.t() / temperature
    offset = rank() * 2 * n
    own = torch.arange(2 * n, device=z1.device) + offset
    logits[torch.arange(2 * n, device=z1.device), own] = float("-inf")
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z1.device) + offset
    return F.cross_entropy(logits, positives)


def moco_v3_loss(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """Symmetric MoCo v3 loss; ``k1``/``k2`` come from the momentum encoder."""

    def ctr(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q, dim=1)
        k = gather_no_grad(F.normalize(k.detach(), dim=1))
        logits = q @ k.t() / temperature
        labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank()
        return F.cross_entropy(logits, labels) * (2 * temperature)

    return ctr(q1, k2) + ctr(q2, k1)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL/SimSiam regression: ``-cos(p, stopgrad(z))`` averaged (Grill et al. 2020; Chen & He 2021). Symmetrise by
    calling it for both (prediction, target) pairs."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()

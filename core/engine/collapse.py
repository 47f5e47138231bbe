"""Collapse monitor: the effective rank of a method's embeddings on a fixed batch, during pretraining.

RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained self-supervised
representations"): for embeddings ``Z`` (``n x d``) with singular values ``s_k``,
``p_k = s_k / sum(s) + eps`` and ``rank(Z) = exp(-sum_k p_k log p_k)`` (``eps = 1e-7``, as the paper). It lies in
``[1, min(n, d)]``; a collapsed representation (every input mapped near one point or one low-dimensional subspace)
has a rank near 1 while its loss may still fall (torchgeo PR #3998: a SimCLR run collapsed this way). MADELEINE
selects checkpoints by the same quantity ("smooth rank").

The threshold is low on purpose: masked-image-modelling features are strongly anisotropic (an MAE ViT-Tiny after 300
steps on PneumoniaMNIST: rank 3.6 of 192 for mean-pooled tokens, 14.3 at random initialisation, while its kNN
accuracy rises by 0.15), so only a rank near 1 (every input on one direction) is called a collapse by default.

The fixed batch is drawn once (evenly spaced samples, seeded), passed through the training transform, and reduced to
one image per sample by :meth:`Method.rank_inputs`; :meth:`Method.embed` gives the backbone's pooled features.
"""

from __future__ import annotations

import logging

import torch
from domainfm.data.sampling import SeededDataset
from domainfm.engine.runtime import autocast
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")


def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe of ``z`` (``n x d``): ``exp`` of the entropy of the normalised singular values."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


class RankMonitor:
    """Embeds a fixed batch every ``every`` steps; warns once when the rank falls under
    ``max(2, fraction * min(n, d))`` (the rank is at least 1, so the floor keeps small batches meaningful)."""

    def __init__(self, inputs: torch.Tensor, every: int, fraction: float):
        self.inputs, self.every, self.fraction = inputs, every, fraction
        self.collapsed_at: int | None = None
        self.last: float | None = None

    @classmethod
    def build(cls, method, dataset: Dataset, transform, collate_fn, n: int, every: int, fraction: float, seed: int):
        """``None`` when the method has no image inputs to embed (or ``every`` is 0)."""
        if every <= 0 or n <= 0 or len(dataset) == 0:
            return None
        n = min(n, len(dataset))
        seeded = SeededDataset(dataset, transform)
        step = len(dataset) / n
        samples = [seeded[(int(i * step), seed + 7_919 * i)] for i in range(n)]
        inputs = method.rank_inputs(collate_fn(samples))
        return None if inputs is None else cls(inputs, every, fraction)

    def due(self, step: int, last: bool) -> bool:
        return step % self.every == 0 or last

    @torch.no_grad()
    def measure(self, method, step: int, device: torch.device, precision: str, chunk: int = 64) -> dict[str, float]:
        was_training = method.training
        method.eval()
        with autocast(device, precision):
            z = torch.cat([method.embed(x.to(device)).float() for x in self.inputs.split(chunk)])
        method.train(was_training)
        rank = self.last = effective_rank(z)
        limit = min(z.shape)
        if self.collapsed_at is None and rank < max(2.0, self.fraction * limit):
            self.collapsed_at = step
            log.warning(
                "step %d: the embeddings are collapsing: effective rank (RankMe) %.2f of at most %d on the fixed "
                "batch (loss may still fall); check the lr, the views and the method's anti-collapse settings",
                step,
                rank,
                limit,
            )
        return {"rankme": rank, "rankme_max": float(limit)}

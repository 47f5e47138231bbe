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

A collapse is a fall: the rank is also measured at initialisation (before the first step; a resumed run measures
its seeded initialisation too), and the warning needs the rank under the threshold *and* more than 10 % under that
start value. Some encoders start near rank 1 and rise while they learn (Point-MAE's mean-pooled tokens: 1.0 after
20 steps, 3.2 of 192 after 1,000, while kNN accuracy rises from 0.83 to 0.96): a low rank that has not fallen is
logged once as information, not a warning.

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
    ``max(2, fraction * min(n, d))`` (the rank is at least 1, so the floor keeps small batches meaningful) and under
    90 % of its value when the run started (:meth:`begin`)."""

    def __init__(self, inputs: torch.Tensor, every: int, fraction: float):
        self.inputs, self.every, self.fraction = inputs, every, fraction
        self.collapsed_at: int | None = None
        self.last: float | None = None
        self.start: float | None = None  # the rank at initialisation
        self._told_low = False

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
    def rank(self, method, device: torch.device, precision: str, chunk: int = 64) -> tuple[float, int]:
        """``(RankMe, its upper bound min(n, d))`` of the method's embeddings of the fixed batch."""
        was_training = method.training
        method.eval()
        with autocast(device, precision):
            z = torch.cat([method.embed(x.to(device)).float() for x in self.inputs.split(chunk)])
        method.train(was_training)
        return effective_rank(z), min(z.shape)

    def begin(self, method, device: torch.device, precision: str) -> None:
        """The rank at initialisation (before any step or resume; a resumed run's seeded initialisation is the same):
        a collapse must fall below it."""
        self.start = self.rank(method, device, precision)[0]

    def measure(self, method, step: int, device: torch.device, precision: str) -> dict[str, float]:
        rank, limit = self.rank(method, device, precision)
        self.last = rank
        low = rank < max(2.0, self.fraction * limit)
        fell = self.start is None or rank < 0.9 * self.start  # by more than rounding
        if self.collapsed_at is None and low and fell:
            self.collapsed_at = step
            since = "" if self.start is None else f" ({self.start:.2f} at step 0)"
            log.warning(
                "step %d: the embeddings are collapsing: effective rank (RankMe) %.2f of at most %d on the fixed "
                "batch%s (loss may still fall); check the lr, the views and the method's anti-collapse settings",
                step,
                rank,
                limit,
                since,
            )
        elif low and not self._told_low and self.collapsed_at is None:
            self._told_low = True
            log.info(
                "step %d: effective rank (RankMe) %.2f of at most %d, low but not below its start (%.2f at step 0): "
                "not a collapse",
                step,
                rank,
                limit,
                self.start,
            )
        return {"rankme": rank, "rankme_max": float(limit)}

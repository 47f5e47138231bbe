"""DINO self-distillation loss with teacher centering or Sinkhorn-Knopp (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers"; Oquab et al. 2023, "DINOv2", ``dinov2/loss/dino_clstoken_loss.py``).

Teacher targets for logits ``t`` (prototype scores) at temperature ``tau_t``:

- centering: ``p_t = softmax((t - c) / tau_t)``; afterwards ``c <- m c + (1 - m) mean_batch(t)`` with ``m = 0.9``
  (the batch mean is taken over all processes);
- Sinkhorn-Knopp (DINOv2 / SwAV): ``Q = exp(t / tau_t)^T`` (K x B), normalised to sum 1, then 3 times: rows to
  ``1/K`` each, columns to ``1/B`` each; ``p_t = B * Q^T`` (sums over all processes).

Loss for student logits ``s`` at ``tau_s = 0.1``: ``H(p_t, s) = -sum_k p_t[k] log softmax(s / tau_s)[k]``, averaged
over the batch, summed over the (student view, teacher view) pairs passed in.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from domainfm.common.distributed import world_size
from torch import nn


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(x)
    return x


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor, temperature: float, iterations: int = 3, num_samples: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Balanced soft assignments ``(B, K)`` of ``logits`` ``(B, K)``; every row sums to 1.

    ``num_samples`` is the global number of rows (default: ``B`` times the number of processes).
    """
    q = torch.exp(logits.float() / temperature).t()  # K x B
    if num_samples is None:
        total = q.shape[1] * world_size()
    else:
        total = _all_reduce(torch.as_tensor(num_samples, device=q.device, dtype=torch.float64).clone())
    k = q.shape[0]
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= total
    q *= total
    return q.t()


def cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """``-sum_k p_t[k] log softmax(s / tau_s)[k]`` per row."""
    return -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)


class DINOLoss(nn.Module):
    """Cross-entropy between teacher targets and student predictions, with the teacher centre as a buffer."""

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9, centering: str = "centering"
    ):
        super().__init__()
        if centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"centering must be 'centering' or 'sinkhorn_knopp', got {centering!r}")
        self.student_temp, self.center_momentum, self.centering = student_temp, center_momentum, centering
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets for ``teacher_logits`` ``(B, K)``; with centering, the centre is then updated with this batch."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp)
        probs = F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)
        self.update_center(teacher_logits)
        return probs

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        batch_sum = _all_reduce(teacher_logits.float().sum(dim=0, keepdim=True))
        batch_mean = batch_sum / (teacher_logits.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)

    def forward(self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]) -> torch.Tensor:
        """Sum over all (student, teacher) pairs of the batch-mean cross-entropy."""
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        for s in student_logits:
            for t in teacher_probs:
                total = total + cross_entropy(t, s, self.student_temp).mean()
        return total

"""iBOT masked-patch self-distillation (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer";
DINOv2 ``dinov2/loss/ibot_patch_loss.py``).

For every masked patch ``i`` of sample ``b`` (``n_b`` masked patches in that sample), the student's prediction for
the masked token is matched to the teacher's target for the unmasked token::

    L = -(1 / B) sum_b sum_{i masked in b} (1 / n_b) sum_k p_t[b, i, k] log softmax(s[b, i] / tau_s)[k]

``B`` counts all samples, masked or not (as DINOv2's ``forward_masked``). Teacher targets use their own centre or
Sinkhorn-Knopp over the masked patches of all processes. The centre is an EMA (m = 0.9) of the *mean over
processes of each process's mean* masked-patch logit, as DINOv2's ``update_center`` computes it
(``sum(t.mean(1), 0)`` on a ``(1, M_rank, K)`` tensor, all-reduced, divided by ``world_size``); with one process,
or equal masked counts per process, that is the mean over all masked patches. A process without masked patches in a
batch is left out of the mean (DINOv2 would produce NaN there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from domainfm.common.distributed import world_size
from domainfm.objectives.dino import _all_reduce, cross_entropy, sinkhorn_knopp
from torch import nn


class IBOTPatchLoss(nn.Module):
    def __init__(
        self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9, centering: str = "centering"
    ):
        super().__init__()
        self.student_temp, self.center_momentum, self.centering = student_temp, center_momentum, centering
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(self, masked_teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets for the masked patches' teacher logits ``(M, K)`` (all masked patches of the batch)."""
        logits = masked_teacher_logits.float()
        if self.centering == "sinkhorn_knopp":
            if logits.shape[0] == 0 and world_size() == 1:
                return logits
            return sinkhorn_knopp(logits, teacher_temp, num_samples=logits.shape[0])
        probs = F.softmax((logits - self.center) / teacher_temp, dim=-1)
        # the collective runs on every process, also on one without masked patches in this batch
        n = logits.shape[0]
        local_mean = logits.sum(dim=0) / max(n, 1)
        total = _all_reduce(torch.cat([local_mean, logits.new_tensor([float(n > 0)])]))
        if total[-1] > 0:
            self.center.mul_(self.center_momentum).add_(total[:-1][None] / total[-1], alpha=1 - self.center_momentum)
        return probs

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``student_logits``/``teacher_probs``: ``(M, K)`` for the masked patches, in ``masks[masks]`` order;
        ``masks``: ``(B, N)`` bool."""
        if student_logits.shape[0] == 0:
            return student_logits.sum() * 0.0
        per_sample = masks.sum(dim=-1, keepdim=True).clamp(min=1).float()
        weights = (1.0 / per_sample).expand_as(masks)[masks]
        loss = cross_entropy(teacher_probs, student_logits, self.student_temp)
        return (loss * weights).sum() / masks.shape[0]

"""Image-text contrastive losses, gathered across processes with gradient (open_clip's ``ClipLoss`` and
``SigLipLoss`` semantics).

CLIP (Radford et al. 2021): ``s = exp(logit_scale)`` (learnable, initialised to ``1/0.07``); as open_clip's
``training/train.py``, the loss uses ``s`` unclamped and the *parameter* is clamped to ``[0, log 100]`` in place after
each optimizer step (:meth:`LogitScale.clamp_`) — clamping inside the loss instead would zero its gradient past
``log 100`` and the scale could never come back down;
for local images ``x_i`` and all texts ``y_j`` (L2-normalised), ``L = (CE(s x y^T, own) + CE(s y x^T, own)) / 2``.
Each process scores its local rows against everything, so the mean over processes equals the single-process loss on
the concatenated batch.

SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"): ``t = exp(t')`` (init ``t' = log 10``),
bias ``b`` (init -10), ``z_ij = +1`` for matching pairs and -1 otherwise::

    L = -(1/|B|) sum_i sum_j log sigmoid( z_ij (t x_i . y_j + b) )
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from domainfm.common.distributed import gather_with_grad, rank
from torch import nn


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    scale = logit_scale.exp()
    labels = torch.arange(image.shape[0], device=image.device) + rank() * image.shape[0]
    return (
        F.cross_entropy(scale * image @ all_text.t(), labels) + F.cross_entropy(scale * text @ all_image.t(), labels)
    ) / 2


def siglip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    all_text = gather_with_grad(text)
    logits = logit_scale.exp() * image @ all_text.t() + logit_bias
    signs = -torch.ones_like(logits)
    idx = torch.arange(image.shape[0], device=image.device)
    signs[idx, idx + rank() * image.shape[0]] = 1.0
    return -F.logsigmoid(signs * logits).sum() / image.shape[0]


class LogitScale(nn.Module):
    """Learnable temperature (and SigLIP bias) parameters."""

    def __init__(self, kind: str = "clip"):
        super().__init__()
        if kind == "clip":
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            self.logit_bias = None
        elif kind == "siglip":
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        else:
            raise ValueError(f"kind must be 'clip' or 'siglip', got {kind!r}")
        self.kind = kind

    @torch.no_grad()
    def clamp_(self, max_scale: float = 100.0) -> None:
        """open_clip's ``logit_scale.clamp_(0, math.log(100))`` after the optimizer step (CLIP and SigLIP)."""
        self.logit_scale.clamp_(0.0, math.log(max_scale))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.kind == "clip":
            return clip_loss(image, text, self.logit_scale)
        return siglip_loss(image, text, self.logit_scale, self.logit_bias)

"""One token view of every image backbone: a ViT's ``forward_features`` tokens ``(B, N, D)`` with its prefix
(class / register) tokens, or a CNN's final feature map ``(B, C, H, W)`` (timm ResNets) as ``H x W`` tokens of
``C`` with no prefix, so pooling (``mean`` = the CNN's global average pool), probes and finetuning treat both alike."""

from __future__ import annotations

import torch
from torch import nn


def forward_tokens(model: nn.Module, images: torch.Tensor, default_prefix: int = 1) -> tuple[torch.Tensor, int]:
    """``(tokens (B, N, D), number of prefix tokens)`` of ``model`` on ``images``."""
    out = model.forward_features(images)
    if out.ndim == 4 and not hasattr(model, "num_prefix_tokens"):  # a CNN feature map
        return out.flatten(2).transpose(1, 2), 0
    return out, int(getattr(model, "num_prefix_tokens", default_prefix))


def is_vit(model: nn.Module) -> bool:
    """A transformer with ``blocks`` (layer decay, drop path and block freezing apply), not a CNN."""
    return hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens")

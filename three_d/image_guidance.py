"""I2P-MAE's 2D guidance (Zhang et al., CVPR 2023, official ``models/I2P_MAE.py``): a frozen 2D ViT's last-block
class-token attention over the patches (averaged over heads, as ``nn.MultiheadAttention(need_weights=True)``; the
class-token row over the patch keys, not renormalised) and its final patch features, on the depth images of
:mod:`~domainfm.three_d.depth_projection`; and the 2D-guided masking of the point tokens.

Masking (``mask_2D_guided``)::

    order = multinomial(softmax(saliency), G, without replacement)      (no temperature, as the official code)
    visible = order[: G - int(ratio * G)]                               (ratio 0.8: 13 of 64 visible)

so tokens the 2D model attends to are more likely to stay visible. The 2D model is any timm-layout ViT (a domainfm
export, ``timm:<name>``); the official CLIP ViT-B/16 tower projects its features with ``ln_post @ proj`` (512-d),
a plain ViT gives its final-norm patch tokens."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def attention_and_features(vit: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, H, W)`` -> class-token saliency ``(B, h, w)`` and patch features ``(B, D, h, w)`` of a timm ViT."""
    x = vit.patch_embed(images)
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
    *head, last = vit.blocks
    for block in head:
        x = block(x)
    attn = last.attn
    b, n, d = x.shape
    qkv = attn.qkv(last.norm1(x)).reshape(b, n, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1).mean(1)  # (B, N, N), heads averaged
    p = vit.num_prefix_tokens
    ph, pw = vit.patch_embed.patch_size
    h, w = images.shape[-2] // ph, images.shape[-1] // pw
    saliency = weights[:, 0, p:].reshape(b, h, w)
    tokens = vit.norm(last(x))[:, p:]
    return saliency, tokens.transpose(1, 2).reshape(b, -1, h, w)


def guided_mask(saliency: torch.Tensor, ratio: float = 0.8, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, G)`` saliency per point token -> ``(B, G)`` bool mask (True = masked), exactly ``int(ratio * G)``
    masked per row, the visible ones drawn by saliency."""
    b, g = saliency.shape
    order = torch.multinomial(saliency.float().softmax(1), g, replacement=False, generator=generator)
    keep = g - int(ratio * g)
    mask = torch.ones(b, g, dtype=torch.bool, device=saliency.device)
    mask.scatter_(1, order[:, :keep], False)
    return mask

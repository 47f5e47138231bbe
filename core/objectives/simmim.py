"""SimMIM (Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling"): a one-layer linear decoder
(1x1 conv + pixel shuffle) predicts raw pixels; L1 on masked pixels only::

    L = sum(|x - x_hat| * M) / (sum(M) + 1e-5) / C

with ``M`` the pixel-level mask (patch mask upsampled by the patch size), ``C`` the number of channels — as in the
reference ``SimMIM.forward``.
"""

from __future__ import annotations

import torch


def simmim_loss(
    images: torch.Tensor, reconstruction: torch.Tensor, patch_mask: torch.Tensor, patch_size: int
) -> torch.Tensor:
    """``images``/``reconstruction``: ``(B, C, H, W)``; ``patch_mask``: ``(B, H/p, W/p)`` or ``(B, N)``, 1 = masked."""
    B, C, H, W = images.shape
    m = patch_mask.reshape(B, H // patch_size, W // patch_size).to(images.dtype)
    m = m.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)
    l1 = (images.float() - reconstruction.float()).abs()
    return (l1 * m).sum() / (m.sum() + 1e-5) / C

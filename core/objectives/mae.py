"""Masked autoencoder pixel loss (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022).

For each masked patch ``i`` with target pixels ``t_i`` (``p*p*C`` values) and prediction ``y_i``::

    t_i <- (t_i - mean(t_i)) / sqrt(var(t_i) + 1e-6)      if norm_pix_loss (unbiased var, as in models_mae.py)
    L = sum_i m_i * mean_j (y_ij - t_ij)^2 / sum_i m_i      (m_i = 1 for masked patches)

``patchify`` works for 2D ``(B, C, H, W)`` and 3D ``(B, C, D, H, W)`` inputs; patches are flattened in
``(pixels..., channels)`` order as in the reference implementation.
"""

from __future__ import annotations

import math

import torch


def patchify(images: torch.Tensor, patch_size: int | tuple[int, ...]) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, N, prod(p) * C)`` with patches in row-major grid order."""
    spatial = images.shape[2:]
    p = (patch_size,) * len(spatial) if isinstance(patch_size, int) else tuple(patch_size)
    if any(s % q for s, q in zip(spatial, p)):
        raise ValueError(f"image size {tuple(spatial)} is not divisible by patch size {p}")
    B, C = images.shape[:2]
    grid = [s // q for s, q in zip(spatial, p)]
    shape = [B, C]
    for g, q in zip(grid, p):
        shape += [g, q]
    x = images.reshape(shape)
    nd = len(spatial)
    grid_axes = [2 + 2 * i for i in range(nd)]
    patch_axes = [3 + 2 * i for i in range(nd)]
    x = x.permute(0, *grid_axes, *patch_axes, 1)
    return x.reshape(B, math.prod(grid), -1)


def unpatchify(patches: torch.Tensor, grid: tuple[int, ...], patch_size: int | tuple[int, ...], channels: int):
    """Inverse of :func:`patchify`."""
    nd = len(grid)
    p = (patch_size,) * nd if isinstance(patch_size, int) else tuple(patch_size)
    B = patches.shape[0]
    x = patches.reshape(B, *grid, *p, channels)
    order = [0, 2 * nd + 1]
    for i in range(nd):
        order += [1 + i, 1 + nd + i]
    x = x.permute(*order)
    return x.reshape(B, channels, *[g * q for g, q in zip(grid, p)])


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = True) -> torch.Tensor:
    """Mean squared error on masked patches. ``pred``/``target`` ``(B, N, K)``, ``mask`` ``(B, N)`` (1 = masked)."""
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

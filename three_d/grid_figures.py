"""Pictures of RGB + alpha grids: an orthographic volume rendering along one axis (front-to-back compositing of the
voxels' alpha, white behind), used for NeRF-MAE's reconstructions and the fitted grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def project(grid: torch.Tensor, axis: int = 2, background: float = 1.0) -> np.ndarray:
    """``(4, W, L, H)`` RGB + alpha -> ``(W, L, 3)`` uint8 image seen along ``axis`` (0: W, 1: L, 2: H; from the
    high end, i.e. from above for H)."""
    g = grid.detach().float().cpu()
    rgb, alpha = g[:3].clamp(0, 1), g[3].clamp(0, 1)
    rgb, alpha = rgb.movedim(axis + 1, -1).flip(-1), alpha.movedim(axis, -1).flip(-1)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
    weights = alpha * trans
    image = (rgb * weights[None]).sum(-1) + background * (1 - weights.sum(-1))[None]
    return (image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def reconstruction_figure(grids: torch.Tensor, pred: torch.Tensor, masked: torch.Tensor, path: Path) -> Path:
    """Rows of ``input | visible input | reconstruction`` (seen from above) for NeRF-MAE: ``grids`` and ``pred``
    ``(B, 4, W, L, H)`` (``pred``'s alpha a logit), ``masked`` ``(B, W, L, H)`` bool."""
    from PIL import Image

    rows = []
    for grid, out, m in zip(grids, pred, masked):
        visible = grid * (~m)[None]
        decoded = torch.cat([out[:3], torch.sigmoid(out[3:])], 0)
        tiles = [project(grid), project(visible), project(decoded)]
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=128) for t in tiles], 1))
    image = Image.fromarray(np.concatenate(rows, 0))
    if image.width < 384:  # small grids: scale up for the eye, nearest neighbour
        scale = 384 // image.width + 1
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path

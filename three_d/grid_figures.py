"""Pictures of RGB + alpha grids: an orthographic volume rendering along one axis (front-to-back compositing of the
voxels' alpha, white behind), used for NeRF-MAE's reconstructions, the fitted grids and semantic voxel labels."""

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


PALETTE = np.array([[0.85, 0.85, 0.85], [0.89, 0.10, 0.11], [0.22, 0.49, 0.72], [0.30, 0.69, 0.29],
                    [0.60, 0.31, 0.64], [1.00, 0.50, 0.00], [0.65, 0.34, 0.16], [0.97, 0.51, 0.75]])  # fmt: skip


def label_grid(labels: np.ndarray) -> torch.Tensor:
    """``(W, L, H)`` class ids -> an opaque ``(4, W, L, H)`` grid coloured by class (0 transparent)."""
    colours = PALETTE[np.asarray(labels) % len(PALETTE)].astype(np.float32)
    alpha = (np.asarray(labels) > 0).astype(np.float32)[..., None]
    return torch.from_numpy(np.concatenate([colours, alpha], -1)).permute(3, 0, 1, 2)


def _save(rows: list[np.ndarray], path: Path) -> Path:
    from PIL import Image

    image = Image.fromarray(np.concatenate(rows, 0))
    if image.width < 384:  # small grids: scale up for the eye, nearest neighbour
        scale = 384 // image.width + 1
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _row(tiles: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=128) for t in tiles], 1)


def segmentation_figure(scenes: list[tuple[torch.Tensor, np.ndarray, np.ndarray]], path: Path) -> Path:
    """Rows of ``input | true classes | predicted classes`` seen from above, one per ``(grid (4, W, L, H), labels,
    predicted)``; predictions drawn on the labeled voxels only (those scored)."""
    rows = [
        _row([project(g), project(label_grid(y)), project(label_grid(np.where(y > 0, p, 0)))]) for g, y, p in scenes
    ]
    return _save(rows, path)


def reconstruction_figure(grids: torch.Tensor, pred: torch.Tensor, masked: torch.Tensor, path: Path) -> Path:
    """Rows of ``input | visible input | reconstruction`` (seen from above) for NeRF-MAE: ``grids`` and ``pred``
    ``(B, 4, W, L, H)`` (``pred``'s alpha a logit), ``masked`` ``(B, W, L, H)`` bool."""
    rows = []
    for grid, out, m in zip(grids, pred, masked):
        visible = grid * (~m)[None]
        decoded = torch.cat([out[:3], torch.sigmoid(out[3:])], 0)
        rows.append(_row([project(grid), project(visible), project(decoded)]))
    return _save(rows, path)

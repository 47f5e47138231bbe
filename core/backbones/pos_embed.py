"""Fixed sin-cos position embeddings for 2D and 3D grids (MAE ``get_2d_sincos_pos_embed``, extended to n-D).

The embedding dimension is split evenly over the grid axes; along each axis with coordinate ``x``,
``omega_k = 1 / 10000^(k / (d/2))`` for ``k < d/2`` and the axis embedding is ``[sin(x*omega), cos(x*omega)]``.
"""

from __future__ import annotations

import torch


def sincos_pos_embed(grid: tuple[int, ...], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``(prod(grid), dim)`` embedding for a row-major grid; ``dim`` must divide by ``2 * len(grid)``."""
    nd = len(grid)
    if dim % (2 * nd):
        raise ValueError(f"embedding dim {dim} must be divisible by {2 * nd} for a {nd}-D grid")
    axis_dim = dim // nd
    omega = 1.0 / temperature ** (torch.arange(axis_dim // 2, dtype=torch.float64) / (axis_dim / 2))
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    # MAE orders the axes (w, h) for 2D; keep that order (last axis first) for fidelity
    for c in reversed(coords):
        angles = c.reshape(-1, 1) * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()

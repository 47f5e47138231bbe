"""Fixed sin-cos position embeddings for 2D and 3D grids (MAE ``get_2d_sincos_pos_embed``, extended to n-D).

The embedding dimension is split evenly over the grid axes (``a = 2 * floor(dim / (2 n))`` per axis; any remainder
of ``dim`` is zero-padded); along each axis with coordinate ``x``, ``omega_k = 1 / 10000^(k / (a/2))`` for
``k < a/2`` and the axis embedding is ``[sin(x omega), cos(x omega)]``. Axes are ordered last-first, as MAE's (w, h).
"""

from __future__ import annotations

import torch


def sincos_pos_embed(grid: tuple[int, ...], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``(prod(grid), dim)`` embedding for a row-major grid."""
    nd = len(grid)
    axis_dim = 2 * (dim // (2 * nd))
    if axis_dim == 0:
        raise ValueError(f"embedding dim {dim} is too small for a {nd}-D grid")
    omega = 1.0 / temperature ** (torch.arange(axis_dim // 2, dtype=torch.float64) / (axis_dim / 2))
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for c in reversed(coords):
        angles = c.reshape(-1, 1) * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    out = torch.cat(parts, dim=1)
    if out.shape[1] < dim:
        out = torch.cat([out, out.new_zeros(out.shape[0], dim - out.shape[1])], dim=1)
    return out.float()

"""I2P-MAE's multi-view projection of a point cloud to depth images and the back-projection of 2D maps to points,
pure torch (Zhang et al., "Learning 3D Representations from 2D Pre-trained Models via Image-to-Point Masked
Autoencoders", CVPR 2023; after the official ``models/I2P_MAE.py`` ``proj2img`` and ``I2P``).

Three axis-aligned views by permuting the coordinates — ``(x, y | z)``, ``(z, x | y)``, ``(y, z | x)``: the first two
are the image plane (row, column), the third the value. Per cloud and view::

    grid = max(range_row, range_col) / (S - 3)             (S = 224)
    idx = floor((p_plane - min_plane) / grid) + d + 1      for every splat offset d in [-2, 2]^2 (5 x 5)
    idx += S / 2 - floor((max idx + min idx) / 2) - 1      (the object centred; per axis, over all splats)
    idx += [idx < 0] - [idx > S - 1]                        (the official one-pixel edge fix)
    image[idx] = sum of the values p_3 of every splat landing there, then sigmoid   (empty pixels: 0.5)

:func:`to_model_input` repeats the image to 3 channels and normalises it with ImageNet's mean / std, as the official
code does before CLIP. :func:`back_project` upsamples a 2D map (``h x w``, e.g. a ViT's 14 x 14 patch grid) to
``S x S`` bicubically and reads it at each point's pixel (the centre of its splat, same min, grid and offsets); it
samples only those pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

VIEWS = ((0, 1, 2), (2, 0, 1), (1, 2, 0))  # (row, column, value) axes of the three views
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Projection:
    """Per cloud and view: ``minimum`` ``(B, V, 2)``, ``grid`` ``(B, V)``, ``offset`` ``(B, V, 2)``."""

    minimum: torch.Tensor
    grid: torch.Tensor
    offset: torch.Tensor
    size: int


def _pixels(plane: torch.Tensor, minimum: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return torch.floor((plane - minimum[:, None]) / grid[:, None, None]) + 1


def project_depth(points: torch.Tensor, size: int = 224, splat: int = 2) -> tuple[torch.Tensor, Projection]:
    """``(B, N, 3)`` -> depth images ``(B, 3, size, size)`` (one per view, values in (0, 1)) and the projection."""
    b, n, _ = points.shape
    d = torch.arange(-splat, splat + 1, device=points.device, dtype=points.dtype)
    offsets = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1).reshape(-1, 2)  # row-major as the official list
    images, minima, grids, shifts = [], [], [], []
    for row, col, value in VIEWS:
        plane = points[..., [row, col]]
        minimum = plane.amin(1)
        grid = (plane.amax(1) - minimum).amax(-1) / (size - 3)
        idx = (_pixels(plane, minimum, grid)[:, :, None] + offsets).reshape(b, -1, 2)
        centre = torch.floor((idx.amax(1) + idx.amin(1)) / 2)
        shift = size / 2 - centre - 1
        idx = idx + shift[:, None]
        idx = idx + (idx < 0).to(idx.dtype) - (idx > size - 1).to(idx.dtype)
        flat = (idx[..., 0] * size + idx[..., 1]).long()
        vals = points[..., value][:, :, None].expand(b, n, len(offsets)).reshape(b, -1)
        image = torch.zeros(b, size * size, dtype=points.dtype, device=points.device).scatter_add_(1, flat, vals)
        images.append(torch.sigmoid(image).reshape(b, size, size))
        minima.append(minimum), grids.append(grid), shifts.append(shift)
    proj = Projection(torch.stack(minima, 1), torch.stack(grids, 1), torch.stack(shifts, 1), size)
    return torch.stack(images, 1), proj


def to_model_input(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """``(B, V, S, S)`` depth images -> ``(B * V, 3, S, S)`` normalised 2D-model input (view-major per cloud)."""
    x = images.reshape(-1, 1, *images.shape[-2:]).expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s


def back_project(points: torch.Tensor, maps: torch.Tensor, proj: Projection) -> torch.Tensor:
    """2D maps ``(B, V, C, h, w)`` read at ``points`` ``(B, M, 3)`` (the projected cloud's or its subsets, e.g.
    group centres) in every view: ``(B, V, M, C)``. Bicubic sampling at the points' pixels only
    (``grid_sample``, border-clamped taps): the value of the official ``S x S`` bicubic upsampling at those pixels
    (to float rounding) without building the ``S x S x C`` maps."""
    b, v, c, h, w = maps.shape
    s = proj.size
    out = []
    for k, (row, col, _) in enumerate(VIEWS):
        idx = _pixels(points[..., [row, col]], proj.minimum[:, k], proj.grid[:, k]) + proj.offset[:, k, None]
        if float(idx.min()) < 0 or float(idx.max()) > s - 1:
            raise ValueError("points outside the projected cloud's image: back-project points of that cloud")
        grid = torch.stack([(2 * idx[..., 1] + 1) / s - 1, (2 * idx[..., 0] + 1) / s - 1], dim=-1)  # (x, y)
        sampled = F.grid_sample(maps[:, k], grid[:, :, None].to(maps.dtype), mode="bicubic", padding_mode="border",
                                align_corners=False)  # fmt: skip
        out.append(sampled[..., 0].transpose(1, 2))
    return torch.stack(out, 1)

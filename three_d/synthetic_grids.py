"""Synthetic radiance grids with per-voxel semantic labels (for tests, the demo and the voxel-probe benchmark: no
labeled radiance grid is redistributable). A scene holds a few primitives — sphere, box, cylinder, torus — at random
places, sizes and colours (colour drawn independently of the class, so the class is a matter of shape, which a 4^3
patch alone does not show); voxels inside an object get its colour and alpha 0.95, empty voxels alpha 0 (sigma far
below NeRF-MAE's 0.01 threshold). Labels: 0 empty, 1 + class index inside an object."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("sphere", "box", "cylinder", "torus")
OCCUPIED_ALPHA = 0.95


def sigma_for_alpha(alpha: float) -> float:
    """The stored sigma whose NeRF-MAE opacity ``1 - exp(-exp(sigma) / 100)`` is ``alpha``."""
    return float(np.log(-100.0 * np.log1p(-alpha)))


def _inside(kind: str, p: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    if kind == "sphere":
        return x**2 + y**2 + z**2 <= radius**2
    if kind == "box":
        half = radius * rng.uniform(0.6, 0.9, size=3)
        return (np.abs(x) <= half[0]) & (np.abs(y) <= half[1]) & (np.abs(z) <= half[2])
    if kind == "cylinder":
        return (x**2 + y**2 <= (0.6 * radius) ** 2) & (np.abs(z) <= radius)
    if kind == "torus":
        tube = 0.35 * radius
        return (np.sqrt(x**2 + y**2) - (radius - tube)) ** 2 + z**2 <= tube**2
    raise ValueError(kind)


def synthetic_scene(size: int, rng: np.random.Generator, objects: tuple[int, int] = (1, 3)):
    """``(rgbsigma (size, size, size, 4) float32, labels (size, size, size) uint8)``."""
    axis = (np.arange(size) + 0.5) / size
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    rgb = np.zeros((size, size, size, 3), np.float32)
    sigma = np.full((size, size, size), sigma_for_alpha(1e-4), np.float32)
    labels = np.zeros((size, size, size), np.uint8)
    for _ in range(rng.integers(objects[0], objects[1] + 1)):
        kind = int(rng.integers(len(CLASSES)))
        radius = rng.uniform(0.18, 0.3)
        centre = rng.uniform(radius, 1 - radius, size=3)
        inside = _inside(CLASSES[kind], points - centre, radius, rng) & (labels == 0)
        rgb[inside] = rng.uniform(0.1, 0.9, size=3)
        sigma[inside] = sigma_for_alpha(OCCUPIED_ALPHA)
        labels[inside] = 1 + kind
    return np.concatenate([rgb, sigma[..., None]], -1), labels


def write_synthetic_grids(out: str | Path, n: int, size: int = 32, seed: int = 0, labels: bool = True) -> list[Path]:
    """``n`` scenes as ``out/scene_XXXX.npz`` (``rgbsigma``; ``labels`` too when asked)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        grid, lab = synthetic_scene(size, rng)
        path = out / f"scene_{i:04d}.npz"
        np.savez_compressed(path, rgbsigma=grid, **({"labels": lab} if labels else {}))
        paths.append(path)
    return paths

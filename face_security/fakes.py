"""Blended fakes from real aligned faces, for tests and benchmarks (no real deepfakes ship with domainfm).

Face X-ray-style blending (Li et al. CVPR 2020): the inner face of a donor (skin, brows, eyes, nose, lips, inner
mouth of the LaPa map, eroded and feathered with a Gaussian) is alpha-blended into a target of another identity,
after matching the donor's colour to the target's inside the mask (per-channel mean and std). Both faces are
aligned to the same template by ``domainfm faces``, so no warping is needed.
"""

from __future__ import annotations

import cv2
import numpy as np

INNER = (1, 2, 3, 4, 5, 6, 7, 8, 9)  # LaPa skin and facial features


def blend_mask(parsing: np.ndarray, erode: int = 5, feather: float = 4.0) -> np.ndarray:
    """``(H, W)`` float in [0, 1]: the inner face of ``parsing``, eroded by ``erode`` px, feathered (Gaussian sigma)."""
    inner = np.isin(parsing, INNER).astype(np.uint8)
    if erode:
        inner = cv2.erode(inner, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8))
    mask = inner.astype(np.float32)
    if feather:
        mask = cv2.GaussianBlur(mask, (0, 0), feather)
    return np.clip(mask, 0.0, 1.0)


def blend_faces(target: np.ndarray, donor: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``target`` (H, W, 3) uint8 with ``donor``'s face alpha-blended in by ``mask``, colour-matched inside it."""
    t, d = target.astype(np.float32), donor.astype(np.float32)
    inside = mask > 0.5
    if inside.any():
        tm, ts = t[inside].mean(0), t[inside].std(0) + 1e-3
        dm, ds = d[inside].mean(0), d[inside].std(0) + 1e-3
        d = (d - dm) / ds * ts + tm
    out = mask[..., None] * d + (1.0 - mask[..., None]) * t
    return np.clip(np.round(out), 0, 255).astype(np.uint8)

"""Tensor view transforms for ``C x H x W`` images with any channel count (torchvision v2 underneath).

Each transform maps a sample dict to a sample dict, so datasets, views and mask generators compose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class RandomView:
    """Random resized crop + flips + per-channel normalisation: the basic SSL view for any modality."""

    def __init__(
        self,
        size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        vflip: float = 0.0,
    ):
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        ops: list[Any] = [v2.RandomResizedCrop(_pair(size), scale=tuple(scale), ratio=tuple(ratio), antialias=True)]
        if hflip:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if vflip:
            ops.append(v2.RandomVerticalFlip(vflip))
        self.ops = v2.Compose(ops)
        self.normalize = Normalize(mean, std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.ops(image))


class Normalize:
    """``(x - mean) / std`` per channel; the channel count must match."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(list(std), dtype=torch.float32)[:, None, None]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] != self.mean.shape[0]:
            raise ValueError(f"image has {image.shape[0]} channels, normalisation expects {self.mean.shape[0]}")
        return (image - self.mean) / self.std


class ResizeView:
    """Deterministic evaluation view: resize (shorter side), centre crop, normalise."""

    def __init__(self, size: int | Sequence[int], mean: Sequence[float], std: Sequence[float], crop_pct: float = 1.0):
        h, w = _pair(size)
        self.ops = v2.Compose([v2.Resize(int(round(min(h, w) / crop_pct)), antialias=True), v2.CenterCrop((h, w))])
        self.normalize = Normalize(mean, std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.ops(image))


class ImageTransform:
    """Apply an image transform to ``sample["image"]``; optionally add a patch mask from ``masking``."""

    def __init__(self, view, masking=None):
        self.view, self.masking = view, masking

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample = dict(sample)
        sample["image"] = self.view(sample["image"])
        if self.masking is not None:
            sample["mask"] = self.masking()
        return sample

"""Multispectral-safe augmentation for normalised chips ``(C, H, W)`` with any band count.

- :class:`SpectralView`: random resized crop (bilinear: no clamping of values outside [0, 1]), horizontal and
  vertical flips, 90-degree rotations (overhead imagery has no "up"), then an optional per-view photometric step.
- :class:`SpectralJitter`: per-band brightness (``x + b_c``) and contrast (``(x - m_c) * k_c + m_c``, ``m_c`` the
  chip's band mean), ``b_c ~ U(-brightness, brightness)``, ``k_c ~ U(1 - contrast, 1 + contrast)`` in normalised
  units, applied with probability ``p`` (``per_band=False``: one factor for all bands, SSL4EO-S12's
  ``RandomBrightness`` / ``RandomContrast``, whose brightness is multiplicative: ``x * U(1 - b, 1 + b)``); a
  "grayscale" with probability ``grayscale`` (every band replaced by the mean over bands, SSL4EO-S12's
  ``ToGray``); then band dropout: each band is set to 0 (its archive mean after ``meanstd`` normalisation) with
  probability ``band_dropout``, at most ``max_dropped`` bands per view.

Hue, saturation and grayscale have no meaning outside RGB: :class:`~domainfm.data.transforms.RGBPhotometric`
refuses non-3-channel input. Defaults follow SSL4EO-S12's multispectral pipeline in spirit (random brightness /
contrast per band instead of colour jitter; flips); the values are ours, see ``docs/remote_sensing.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from domainfm.data.transforms import Normalize, random_crop


class SpectralJitter:
    """Per-band brightness / contrast and band dropout (see the module docstring)."""

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        p: float = 0.8,
        band_dropout: float = 0.0,
        max_dropped: int = 1,
        per_band: bool = True,
        grayscale: float = 0.0,
    ):
        for name, value in (("p", p), ("band_dropout", band_dropout), ("grayscale", grayscale)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}={value} is a probability in [0, 1]")
        self.brightness, self.contrast, self.p = float(brightness), float(contrast), float(p)
        self.band_dropout, self.max_dropped = float(band_dropout), int(max_dropped)
        self.per_band, self.grayscale = bool(per_band), float(grayscale)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise ValueError(f"SpectralJitter takes a float (normalised) image, got {image.dtype}")
        c = image.shape[-3]
        out = image
        if self.p and float(torch.rand(())) < self.p:
            n = c if self.per_band else 1
            bright = (torch.rand(n) * 2 - 1) * self.brightness
            gain = 1 + (torch.rand(n) * 2 - 1) * self.contrast
            if self.per_band:
                mean = image.mean((-2, -1), keepdim=True)
                out = (image - mean) * gain[:, None, None] + mean + bright[:, None, None]
            else:  # SSL4EO-S12: x * (1 + b), then (x - m_c) * k + m_c
                out = image * (1 + bright)
                mean = out.mean((-2, -1), keepdim=True)
                out = (out - mean) * gain + mean
        if self.grayscale and float(torch.rand(())) < self.grayscale:
            out = out.mean(-3, keepdim=True).expand_as(out).clone()
        if self.band_dropout and self.max_dropped > 0:
            drop = torch.rand(c) < self.band_dropout
            keep_at_most = torch.nonzero(drop).flatten()[torch.randperm(int(drop.sum()))][: self.max_dropped]
            if keep_at_most.numel():
                out = out.clone() if out is image else out
                out[keep_at_most] = 0.0
        return out

    def __repr__(self) -> str:
        return (
            f"SpectralJitter(brightness={self.brightness}, contrast={self.contrast}, p={self.p}, "
            f"band_dropout={self.band_dropout}, max_dropped={self.max_dropped}, per_band={self.per_band}, "
            f"grayscale={self.grayscale})"
        )


class SpectralView:
    """Crop + flips + 90-degree rotations + ``photometric`` + ``(x - mean) / std`` (default: identity, for chips
    the dataset normalised already). Output is a float ``(C, size, size)``."""

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        vflip: float = 0.5,
        rot90: bool = True,
        photometric: Any = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        self.size, self.scale, self.ratio = (int(size), int(size)), tuple(scale), tuple(ratio)
        self.hflip, self.vflip, self.rot90, self.photometric = hflip, vflip, rot90, photometric
        self.normalize = Normalize(mean, std) if mean is not None and std is not None else None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        out, _ = random_crop(image.float(), self.size, self.scale, self.ratio, self.hflip, self.vflip, "bilinear")
        if self.rot90:
            k = int(torch.randint(4, ()))
            if k:
                out = torch.rot90(out, k, (-2, -1))
        if self.photometric is not None:
            out = self.photometric(out)
        return self.normalize(out) if self.normalize is not None else out

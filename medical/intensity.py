"""Intensity preprocessing of CT and MR voxels, recorded in the export so the weights are always fed the same way.

- CT: Hounsfield windows ``(level, width)`` -> ``clip((x - (level - width / 2)) / width, 0, 1)``, several windows
  stacked as channels: what monai's ``ScaleIntensityRange(a_min=level - width/2, a_max=level + width/2, b_min=0,
  b_max=1, clip=True)`` does per window (one numpy line each here, tested equal to monai's). Named presets (the
  usual radiology-viewer windows): soft tissue (40, 400), lung (-600, 1500), bone (400, 1800), brain (40, 80),
  liver (60, 160), mediastinum (50, 350).
- MR (and anything else without a calibrated unit): clip to the volume's own ``lower``-``upper`` percentiles
  (default 0.5-99.5, over the nonzero voxels when ``nonzero``: the background of skull-stripped or cropped MR is
  not tissue), then z-score with the mean / std of those clipped voxels (nnU-Net's MR normalisation), one channel.

:class:`Intensity` picks by modality (``mode=auto``: CT -> windows, else percentile + z-score) and knows its own
channel count and its export record (``to_dict``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from domainfm.errors import ConfigError

WINDOWS = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
}


def window_bounds(window: str | Sequence[float]) -> tuple[float, float]:
    """``(a_min, a_max)`` in HU of a named window or a ``(level, width)`` pair."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ConfigError(f"unknown CT window {window!r}; named windows: {', '.join(WINDOWS)} (or [level,width])")
        level, width = WINDOWS[window]
    else:
        level, width = (float(v) for v in window)
    if width <= 0:
        raise ConfigError(f"CT window {window}: the width must be > 0")
    return level - width / 2, level + width / 2


def ct_windows(hu: np.ndarray, windows: Sequence) -> np.ndarray:
    """``(len(windows), *hu.shape)`` float32 in [0, 1]."""
    out = np.empty((len(windows), *hu.shape), np.float32)
    for c, window in enumerate(windows):
        lo, hi = window_bounds(window)
        np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0, out=out[c])
    return out


def percentile_zscore(
    x: np.ndarray, lower: float = 0.5, upper: float = 99.5, nonzero: bool = True
) -> np.ndarray:  # fmt: skip
    """``(1, *x.shape)`` float32: ``x`` clipped to its ``lower``-``upper`` percentiles (of the nonzero voxels when
    ``nonzero`` and there are any), then ``(x - mean) / std`` of the clipped values over the same voxels."""
    x = x.astype(np.float32)
    values = x[x != 0] if nonzero and np.any(x != 0) else x.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
    clipped = np.clip(x, lo, hi)
    ref = np.clip(values, lo, hi)
    std = float(ref.std())
    return ((clipped - float(ref.mean())) / (std if std > 0 else 1.0)).astype(np.float32)[None]


@dataclass
class Intensity:
    """``mode``: ``auto`` | ``ct`` | ``mr``; ``windows`` for CT (names or ``[level, width]``); ``percentiles`` and
    ``nonzero`` for MR."""

    mode: str = "auto"
    windows: list = field(default_factory=lambda: ["soft_tissue", "lung", "bone"])
    percentiles: tuple[float, float] = (0.5, 99.5)
    nonzero: bool = True

    def __post_init__(self):
        if self.mode not in ("auto", "ct", "mr"):
            raise ConfigError(f"intensity mode={self.mode!r}; choose auto, ct or mr")
        for w in self.windows:
            window_bounds(w)
        self.windows = [w if isinstance(w, str) else [float(v) for v in w] for w in self.windows]
        self.percentiles = (float(self.percentiles[0]), float(self.percentiles[1]))

    def resolved(self, modality: str) -> str:
        return self.mode if self.mode != "auto" else ("ct" if modality.upper() == "CT" else "mr")

    def channels(self, modality: str = "CT") -> int:
        return len(self.windows) if self.resolved(modality) == "ct" else 1

    def __call__(self, x: np.ndarray, modality: str) -> np.ndarray:
        if self.resolved(modality) == "ct":
            return ct_windows(x, self.windows)
        return percentile_zscore(x, *self.percentiles, nonzero=self.nonzero)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "windows": self.windows, "percentiles": list(self.percentiles),
                "nonzero": self.nonzero}  # fmt: skip

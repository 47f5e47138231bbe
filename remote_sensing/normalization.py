"""Band normalisation that travels with the weights: the bands (names, in order), the conventions the field uses,
and the numbers, recorded in the export (``config.json`` -> ``"domainfm"`` -> ``"normalization"``) and applied
when the weights are loaded (:class:`~domainfm.remote_sensing.model.SpectralBackbone`, :class:`ChipDataset`).

Every convention first maps file values (digital numbers, DN) to reflectance, ``r = (DN + offset) * scale``, where
``scale`` / ``offset`` come from the STAC item's ``raster:bands`` or default to Sentinel-2 L2A's
``1 / 10000`` and 0 (products of processing baseline >= 04.00 carry ``BOA_ADD_OFFSET = -1000``: give
``offset=-1000``), then:

- ``scale``: ``r`` as is (SatMAE, torchgeo's SSL4EO-S12 weights: DN / 10000);
- ``meanstd``: ``(r - mean_b) / std_b`` with per-band statistics of the archive (``band_stats.json`` of
  ``domainfm chips``; SSL4EO-S12, Prithvi);
- ``percentile``: ``clip((r - low_b) / (high_b - low_b), 0, 1)`` with the archive's 2nd / 98th percentiles
  (the display stretch many RGB pipelines and Corley et al. 2023 compare).

Why it matters: Corley et al. (2023, "Revisiting pre-trained remote sensing model benchmarks") gain up to 32
points on So2Sat only by feeding the pretraining normalisation; torchgeo #1042 / PR #1166 / PR #4045 are that bug.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.errors import ConfigError, DataError

CONVENTIONS = ("scale", "meanstd", "percentile")


@dataclass
class BandNormalization:
    """``bands`` (names, in the order the model sees them) and how file values become model input."""

    bands: list[str]
    convention: str = "meanstd"
    scale: float = 1e-4
    offset: float = 0.0
    mean: list[float] | None = None  # reflectance units, per band (meanstd)
    std: list[float] | None = None
    low: list[float] | None = None  # reflectance units, per band (percentile)
    high: list[float] | None = None

    def __post_init__(self) -> None:
        self.bands = [str(b) for b in self.bands]
        if self.convention not in CONVENTIONS:
            raise ConfigError(f"normalization={self.convention!r}: use one of {', '.join(CONVENTIONS)}")
        need = {"meanstd": ("mean", "std"), "percentile": ("low", "high")}.get(self.convention, ())
        for key in need:
            values = getattr(self, key)
            if values is None or len(values) != len(self.bands):
                raise ConfigError(
                    f"normalization {self.convention} needs {key} for each of the {len(self.bands)} bands "
                    f"({', '.join(self.bands)}); got {None if values is None else len(values)}"
                )
            setattr(self, key, [float(v) for v in values])
        if self.convention == "meanstd" and min(self.std) <= 0:
            raise ConfigError(f"normalization meanstd: std must be > 0 for every band, got {self.std}")
        if self.convention == "percentile" and any(h <= lo for lo, h in zip(self.low, self.high)):
            raise ConfigError("normalization percentile: high must exceed low for every band")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_stats(
        cls,
        stats: dict[str, Any],
        bands: Sequence[str],
        convention: str = "meanstd",
        scale: float = 1e-4,
        offset: float = 0.0,
        percentiles: tuple[str, str] = ("p2", "p98"),
    ) -> BandNormalization:
        """From per-band statistics in file units (``{"bands": {name: {"mean", "std", "p2", "p98"}}}``, as
        :func:`~domainfm.remote_sensing.stats.band_statistics` writes): converted to reflectance units."""
        per_band = stats.get("bands", stats)
        missing = [b for b in bands if b not in per_band or "mean" not in per_band[b]]
        if missing and convention != "scale":
            raise DataError(f"the band statistics have no values for {', '.join(missing)}")
        kw: dict[str, Any] = {}
        if convention == "meanstd":
            kw["mean"] = [(per_band[b]["mean"] + offset) * scale for b in bands]
            kw["std"] = [max(per_band[b]["std"] * scale, 1e-6) for b in bands]
        elif convention == "percentile":
            lo, hi = percentiles
            kw["low"] = [(per_band[b][lo] + offset) * scale for b in bands]
            kw["high"] = [max((per_band[b][hi] + offset) * scale, kw["low"][i] + 1e-6) for i, b in enumerate(bands)]
        return cls(list(bands), convention, scale, offset, **kw)

    @classmethod
    def from_chips(
        cls, chips_dir: str | Path, bands: Sequence[str], convention: str = "meanstd", scale: float = 1e-4,
        offset: float = 0.0,
    ) -> BandNormalization:  # fmt: skip
        """From ``<chips_dir>/band_stats.json`` (written by ``domainfm chips``): the group holding ``bands``."""
        if convention == "scale":
            return cls(list(bands), "scale", scale, offset)
        path = Path(chips_dir) / "band_stats.json"
        if not path.is_file():
            raise DataError(
                f"{path} is missing: normalization={convention} needs the archive's band statistics; rerun "
                f"domainfm chips with stats.max_chips > 0, or use normalization=scale"
            )
        groups = json.loads(path.read_text())["groups"]
        for group in groups:
            if set(bands) <= set(group["names"]):
                return cls.from_stats(group, bands, convention, scale, offset)
        have = "; ".join(",".join(g["names"]) for g in groups)
        raise DataError(f"{path}: no statistics cover the bands {','.join(bands)} (groups: {have})")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandNormalization:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    # ------------------------------------------------------------------ applying
    def _params(self) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
        """Per-band ``a, b`` with ``model input = DN * a + b`` (then clipped for ``percentile``)."""
        n = len(self.bands)
        if self.convention == "scale":
            a, b = np.full(n, self.scale), np.full(n, self.offset * self.scale)
        elif self.convention == "meanstd":
            std, mean = np.asarray(self.std), np.asarray(self.mean)
            a, b = self.scale / std, (self.offset * self.scale - mean) / std
        else:
            width = np.asarray(self.high) - np.asarray(self.low)
            a, b = self.scale / width, (self.offset * self.scale - np.asarray(self.low)) / width
        return a, b, (0.0, 1.0) if self.convention == "percentile" else None

    def __call__(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """File values ``(..., C, H, W)`` (C = ``len(bands)``, in ``bands`` order) -> float32 model input."""
        if image.shape[-3] != len(self.bands):
            raise DataError(self.mismatch(f"{image.shape[-3]} bands"))
        a, b, clip = self._params()
        if isinstance(image, torch.Tensor):
            at = torch.as_tensor(a, dtype=torch.float32, device=image.device)[:, None, None]
            bt = torch.as_tensor(b, dtype=torch.float32, device=image.device)[:, None, None]
            out = image.float() * at + bt
            return out.clamp_(*clip) if clip else out
        out = np.asarray(image, np.float32) * a.astype(np.float32)[:, None, None] + b.astype(np.float32)[:, None, None]
        return np.clip(out, *clip, out=out) if clip else out

    def check_bands(self, names: Sequence[str], source: str = "input") -> None:
        """Raise unless ``names`` are the bands the weights expect, in the same order."""
        if list(names) != self.bands:
            raise DataError(self.mismatch(f"bands {','.join(names)}", source))

    def mismatch(self, got: str, source: str = "input") -> str:
        return (
            f"{source} has {got}; these weights expect {len(self.bands)} bands in this order: {','.join(self.bands)} "
            "(select and reorder by name: domainfm.remote_sensing.select_bands(x, have=<your band names>, "
            "want=model.bands), or ChipDataset(bands=model.bands))"
        )


def select_bands(image: np.ndarray | torch.Tensor, have: Sequence[str], want: Sequence[str]):
    """The channels of ``image`` (``(..., C, H, W)`` with bands ``have``) reordered / selected to ``want``."""
    have = list(have)
    if image.shape[-3] != len(have):
        raise DataError(f"the image has {image.shape[-3]} channels but {len(have)} band names were given")
    missing = [b for b in want if b not in have]
    if missing:
        raise DataError(f"the image has no band {', '.join(missing)} (it has {', '.join(have)})")
    index = [have.index(b) for b in want]
    if isinstance(image, torch.Tensor):
        return image.index_select(-3, torch.tensor(index, device=image.device))
    return np.take(image, index, axis=-3)

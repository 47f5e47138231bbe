"""A backbone whose band normalisation is part of the model: file values in, features out.

``SpectralBackbone.from_pretrained(<run or export folder | hf-hub:... >)`` reads the bands and the normalisation the
weights were trained with (``config.json`` -> ``"domainfm"``, written by ``domainfm pretrain`` from
:meth:`ChipDataset.preprocess_info`) and applies them in ``forward``; input with another band count, or band names
in another order, is an error naming the expected bands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from domainfm.backbones.loading import load_backbone
from domainfm.errors import DataError
from domainfm.remote_sensing.normalization import BandNormalization
from torch import nn


def normalization_of(model: nn.Module, source: str = "the backbone") -> BandNormalization:
    """The :class:`BandNormalization` recorded with a loaded backbone (``model.pretrained_cfg["domainfm"]``)."""
    info = (getattr(model, "pretrained_cfg", None) or {}).get("domainfm") or {}
    if not info.get("normalization"):
        raise DataError(
            f"{source} records no band normalisation (export keys: {', '.join(info) or 'none'}): it was not "
            "pretrained on chips by domainfm; give data.dataset.normalization=<scale|meanstd|percentile> yourself"
        )
    return BandNormalization.from_dict(info["normalization"])


class SpectralBackbone(nn.Module):
    """``normalization`` then ``backbone``; ``info`` holds the export's band metadata (wavelengths, GSD, chip)."""

    def __init__(self, backbone: nn.Module, normalization: BandNormalization, info: dict[str, Any] | None = None):
        super().__init__()
        self.backbone, self.normalization = backbone, normalization
        self.info = dict(info or {})
        chans = backbone.patch_embed.proj.in_channels
        if chans != len(normalization.bands):
            raise DataError(f"the backbone takes {chans} channels but the normalisation names {len(self.bands)} bands")

    @classmethod
    def from_pretrained(cls, source: str, **kwargs: Any) -> SpectralBackbone:
        model = load_backbone(source, **kwargs)
        return cls(model, normalization_of(model, str(source)), model.pretrained_cfg.get("domainfm"))

    @property
    def bands(self) -> list[str]:
        return list(self.normalization.bands)

    def prepare(self, x: torch.Tensor, bands: Sequence[str] | None = None) -> torch.Tensor:
        """File values ``(B, C, H, W)`` -> the normalised input the weights expect."""
        if bands is not None:
            self.normalization.check_bands(bands)
        return self.normalization(x)

    def forward(self, x: torch.Tensor, bands: Sequence[str] | None = None) -> torch.Tensor:
        """Pooled features of file values ``x`` (``bands``: their names, checked against :attr:`bands`)."""
        return self.backbone(self.prepare(x, bands))

    def forward_features(self, x: torch.Tensor, bands: Sequence[str] | None = None) -> torch.Tensor:
        return self.backbone.forward_features(self.prepare(x, bands))

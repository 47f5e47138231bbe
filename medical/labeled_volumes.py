"""Labeled volumes for 3D backbones: how a backbone reads volumes (the intensity, modality, spacing and mean / std
its export records), and whole volumes with a class label for volume-level classification through the core's
protocols (``domainfm evaluate data.volumes=<csv>``: kNN, linear, few-shot on frozen features; ``domainfm finetune
data.volumes=<csv>``: the core's finetuning recipe).

A volume becomes the backbone's input as monai's 3D classification examples do it: read in RAS, resampled to the
recorded spacing, intensity-normalised, then the whole volume resized to the input size (trilinear, monai
``Resize``'s default). Training views (:class:`VolumeView`) crop a random
sub-volume holding a fraction ``crop_scale`` of the voxels (the 3D random resized crop, aspect kept) and flip
left-right / anterior-posterior with the given probabilities before that resize."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.errors import DataError
from domainfm.medical.datasets import crop_foreground
from domainfm.medical.intensity import Intensity
from domainfm.medical.readers import Volume, read_volume
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")


def open_volume_backbone(
    source: str, default_intensity: dict, modality: str | None = None, spacing=None, in_chans: int | None = None
) -> tuple[nn.Module, dict]:
    """The backbone of ``source`` (channels adapted to its intensity's) and its ``reading``: ``intensity``,
    ``modality``, ``spacing``, ``mean``, ``std``. The export's record decides; ``default_intensity`` and
    ``modality`` (default MR) and ``spacing`` apply when it has none (``spacing`` given overrides it)."""
    probe = load_backbone(source, in_chans=in_chans)
    recorded = dict((probe.pretrained_cfg or {}).get("domainfm") or {})
    intensity = Intensity(**(recorded.get("intensity") or default_intensity))
    modality = modality or (recorded.get("modality") or ["MR"])[0]
    spacing = list(spacing) if spacing else recorded.get("spacing")
    chans = intensity.channels(modality)
    model = probe if probe.patch_embed.proj.in_channels == chans else load_backbone(source, in_chans=chans)
    pre = model.pretrained_cfg
    reading = {"intensity": intensity.to_dict(), "modality": modality, "spacing": spacing,
               "mean": [float(v) for v in pre["mean"]], "std": [float(v) for v in pre["std"]]}  # fmt: skip
    if recorded.get("foreground"):
        reading["foreground"] = True  # pretrained on foreground crops: whole volumes are cropped the same way
    return model, reading


def open_for_config(cfg, source: str) -> tuple[nn.Module, dict]:
    """:func:`open_volume_backbone` with a command's ``data.intensity``, ``data.modality``, ``data.spacing`` and
    ``in_chans``."""
    from omegaconf import OmegaConf

    intensity = OmegaConf.to_container(cfg.data.intensity, resolve=True)
    return open_volume_backbone(
        source, intensity, cfg.data.get("modality"), cfg.data.get("spacing"), cfg.get("in_chans")
    )


def normalise(volume: Volume, reading: dict) -> np.ndarray:
    """``(C, X, Y, Z)`` float32: ``reading``'s intensity (CT windows as channels, MR percentile + z-score), then
    ``(x - mean) / std``."""
    x = Intensity(**reading["intensity"])(np.asarray(volume.array), reading["modality"])
    chans = x.shape[0]
    m = np.broadcast_to(np.asarray(reading["mean"], np.float32).reshape(-1), (chans,)).reshape(chans, 1, 1, 1)
    s = np.broadcast_to(np.asarray(reading["std"], np.float32).reshape(-1), (chans,)).reshape(chans, 1, 1, 1)
    return ((x - m) / s).astype(np.float32)


def read_normalised(path: Path, reading: dict) -> np.ndarray:
    """A volume file or DICOM series folder read in RAS, resampled to ``reading["spacing"]`` (when set),
    normalised, and cropped to its foreground when ``reading["foreground"]``."""
    volume = read_volume(path)
    if reading.get("spacing") is not None and not np.allclose(volume.spacing, reading["spacing"], rtol=1e-3):
        from domainfm.medical.resample import resample_to_spacing

        volume = resample_to_spacing(volume, reading["spacing"])
    x = normalise(volume, reading)
    return crop_foreground(x) if reading.get("foreground") else x


def resize_volume(x: torch.Tensor, size) -> torch.Tensor:
    """``(C, X, Y, Z)`` -> ``(C, *size)``, trilinear (``align_corners=False``): monai ``Resize``'s default. Not its
    optional Gaussian anti-aliasing: that pads with zeros, which darkens the border of a normalised volume."""
    size = tuple(int(s) for s in size)
    return torch.nn.functional.interpolate(x[None].float(), size=size, mode="trilinear", align_corners=False)[0]


class VolumeView:
    """Training view of a whole volume: a random crop holding a fraction ``U(crop_scale)`` of its voxels (each
    side scaled by the cube root, position uniform), flips along x (left-right, ``hflip``) and y
    (anterior-posterior, ``vflip``), then resized to ``size``."""

    def __init__(self, size, crop_scale=(0.5, 1.0), hflip: float = 0.5, vflip: float = 0.0):
        self.size, self.scale = tuple(int(s) for s in size), tuple(float(s) for s in crop_scale)
        self.hflip, self.vflip = float(hflip), float(vflip)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.scale
        side = (lo + (hi - lo) * torch.rand(()).item()) ** (1 / 3)
        extent = [max(1, round(n * side)) for n in x.shape[1:]]
        start = [int(torch.randint(0, n - e + 1, ()).item()) for n, e in zip(x.shape[1:], extent)]
        x = x[:, start[0] : start[0] + extent[0], start[1] : start[1] + extent[1], start[2] : start[2] + extent[2]]
        flips = [d for d, p in ((1, self.hflip), (2, self.vflip)) if torch.rand(()).item() < p]
        if flips:
            x = torch.flip(x, flips)
        return resize_volume(x, self.size)


class LabeledVolumes(Dataset):
    """Whole volumes with class labels: ``image`` ``(C, *size)`` (the evaluation view: the whole volume resized,
    or ``view``'s training view), ``label``, ``meta.id``. ``cache`` keeps the normalised volumes in memory (for
    finetuning's many epochs over a small labeled set)."""

    def __init__(self, paths, labels, ids, reading: dict, size, view: VolumeView | None = None, cache: bool = False):
        self.paths, self.labels, self.ids = [Path(p) for p in paths], np.asarray(labels), list(ids)
        self.reading, self.size, self.view = reading, tuple(int(s) for s in size), view
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.fingerprint_extra = {"reading": reading, "fit": "resize"}

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, i: int) -> str:
        return str(self.paths[i])

    def _volume(self, i: int) -> torch.Tensor:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        x = torch.from_numpy(read_normalised(self.paths[i], self.reading))
        if self._cache is not None:
            self._cache[i] = x
        return x

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = self._volume(i)
        image = self.view(x) if self.view is not None else resize_volume(x, self.size)
        return {"image": image, "label": int(self.labels[i]), "meta": {"id": self.ids[i]}}


def check_3d(preprocess, source: str) -> None:
    """Volume-level classification needs a 3D backbone (``preprocess``: its
    :class:`~domainfm.evaluation.features.Preprocess`): one line saying what to do otherwise."""
    if len(preprocess.size) != 3:
        raise DataError(
            f"{source} is a 2D backbone; data.volumes needs a 3D one (e.g. recipe=medical/mae3d). For a 2D backbone "
            "write the slices as images and use data.csv=<path,label>"
        )

"""Faces with their parsing maps (the folder ``domainfm faces`` writes) and the view that moves both together.

FSFM's ``--apply_simple_augment`` path crops and flips the image but not its parsing map, so its CRFR-P masks then
cover the wrong patches; :class:`FaceParsingView` crops, resizes (nearest for the map) and flips both with the same
parameters, and a flip swaps the subject's left/right classes (brows, eyes) as the mirrored face requires.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.data.images import read_image
from domainfm.data.transforms import Normalize
from domainfm.errors import DataError
from domainfm.face_security.parsing import LAPA
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

# class index -> its mirror image's class (right <-> left)
MIRROR = torch.arange(len(LAPA))
for _a, _b in (("right_brow", "left_brow"), ("right_eye", "left_eye")):
    MIRROR[LAPA[_a]], MIRROR[LAPA[_b]] = LAPA[_b], LAPA[_a]


class FaceParsingDataset(Dataset):
    """Rows of ``<root>/faces.csv`` -> ``{"image": 3 x H x W float, "parsing": H x W long, "meta": {path, video}}``."""

    def __init__(self, root: str | Path, transform=None):
        self.root = Path(root).expanduser()
        index = self.root / "faces.csv"
        if not index.is_file():
            raise DataError(
                f"{index} not found: point data.root at a folder written by domainfm faces data.root=<videos> out=<dir>"
            )
        with index.open() as f:
            self.rows = list(csv.DictReader(f))
        if not self.rows:
            raise DataError(f"{index} lists no faces: see {self.root / 'summary.json'} for what was found")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, index: int) -> str:
        return self.rows[index]["path"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        image = read_image(self.root / row["path"], 3)
        with Image.open(self.root / row["parsing"]) as im:
            parsing = torch.from_numpy(np.asarray(im, dtype=np.uint8).astype(np.int64))
        if parsing.shape != image.shape[1:]:
            raise DataError(f"{row['parsing']}: map {tuple(parsing.shape)} vs image {tuple(image.shape[1:])}")
        sample = {"image": image, "parsing": parsing, "meta": {"path": row["path"], "video": row["video"]}}
        return self.transform(sample) if self.transform else sample


class FaceParsingView:
    """Resize (``scale=None``, FSFM's default) or random-resized-crop to ``size``, horizontal flip with probability
    ``hflip`` (mirroring left/right classes), normalise the image; the parsing map follows with nearest sampling."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: Sequence[float] | None = None,
        hflip: float = 0.0,
        interpolation: str = "bicubic",
    ):
        mode = v2.InterpolationMode[interpolation.upper()]
        geometry = v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=mode, antialias=True) if scale else None
        self.geometry = geometry or v2.Resize((size, size), interpolation=mode, antialias=True)
        self.hflip, self.normalize = hflip, Normalize(mean, std)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image, parsing = self.geometry(tv_tensors.Image(sample["image"]), tv_tensors.Mask(sample["parsing"][None]))
        image, parsing = image.as_subclass(torch.Tensor).clamp(0, 1), parsing.as_subclass(torch.Tensor)[0]
        if self.hflip and torch.rand(()) < self.hflip:
            image, parsing = image.flip(-1), MIRROR[parsing.flip(-1)]
        return {**sample, "image": self.normalize(image), "parsing": parsing}

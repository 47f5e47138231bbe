"""Images stored as numpy arrays (``.npz``/``.npy``), e.g. the MedMNIST collections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.errors import DataError
from torch.utils.data import Dataset


class NpzImages(Dataset):
    """Images ``(N, H, W)`` or ``(N, H, W, C)`` (uint8 or float) from array ``key`` of the ``.npz`` file ``root``;
    labels from ``labels_key`` when given. Samples: ``{"image": C x H x W float in [0, 1], "label": int,
    "meta": {"index": i}}``."""

    def __init__(
        self, root: str | Path, key: str = "train_images", labels_key: str | None = None, in_chans: int | None = None
    ):
        self.path = Path(root)
        if not self.path.exists():
            raise DataError(f"{self.path} not found: point data.root at the .npz file")
        with np.load(self.path) as archive:
            if key not in archive:
                raise DataError(f"{self.path} has no array {key!r}; arrays: {', '.join(archive.files)}")
            images = archive[key]
            self.labels = archive[labels_key].reshape(len(images), -1)[:, 0].astype(np.int64) if labels_key else None
        if images.ndim == 3:
            images = images[..., None]
        if in_chans is not None and images.shape[-1] != in_chans:
            raise DataError(
                f"{self.path}[{key}] has {images.shape[-1]} channels, the config expects {in_chans} "
                "(set preprocess.in_chans)"
            )
        self.images = images  # N, H, W, C

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return f"{self.path}[{index}]"

    def __getitem__(self, index: int) -> dict[str, Any]:
        array = self.images[index]
        image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        image = image.float() / 255.0 if array.dtype == np.uint8 else image.float()
        sample: dict[str, Any] = {"image": image, "meta": {"index": int(index)}}
        if self.labels is not None:
            sample["label"] = int(self.labels[index])
        return sample

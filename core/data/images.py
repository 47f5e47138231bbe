"""Reading image files into ``C x H x W`` float tensors in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from domainfm.errors import DataError
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def _scale(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    return array.astype(np.float32)


def read_image(path: str | Path, channels: int | None = 3) -> torch.Tensor:
    """Read an image as ``C x H x W`` float32 in [0, 1].

    ``channels=3`` converts to RGB, ``channels=1`` to grey; any other number reads multi-channel TIFFs
    (``H x W x C`` or ``C x H x W``) with tifffile and checks the count; ``None`` keeps what the file has.
    """
    path = Path(path)
    if channels in (1, 3):
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            array = np.asarray(im)
        array = array[..., None] if array.ndim == 2 else array
        return torch.from_numpy(np.ascontiguousarray(_scale(array).transpose(2, 0, 1)))
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(path)
    else:
        with Image.open(path) as im:
            array = np.asarray(im)
    if array.ndim == 2:
        array = array[None]
    elif (
        array.ndim == 3
        and channels is not None
        and array.shape[0] != channels
        and array.shape[-1] == channels
        or array.ndim == 3
        and channels is None
        and array.shape[-1] < array.shape[0]
    ):
        array = array.transpose(2, 0, 1)
    if channels is not None and array.shape[0] != channels:
        raise DataError(
            f"{path}: has {array.shape[0]} channels, the config expects {channels} (set preprocess.in_chans)"
        )
    return torch.from_numpy(np.ascontiguousarray(_scale(array)))

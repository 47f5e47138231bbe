"""Reading image files into ``C x H x W`` float tensors in [0, 1].

Pixel scaling is by the stored type's range: uint8 / 255, uint16 / 65535 (so 12-bit data stored in 16 bits reads
as at most 4095 / 65535), other integers by their maximum; 32-bit integer images whose values all lie in
0..65535 (how Pillow opens 16-bit PNGs, mode ``I``) / 65535; float images are taken as they are. 16-bit and float
images are read at full depth — never through Pillow's ``convert("L")``, which clips them to 0..255 first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from domainfm.errors import DataError
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


_DEEP_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}  # Pillow modes that convert("L"/"RGB") would clip
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's convert("L")


def _scale(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.int32 and array.size and array.min() >= 0 and array.max() <= 65535:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    return array.astype(np.float32)


def _tiff_bits(im: Image.Image) -> tuple[int, ...]:
    bits = im.tag_v2.get(258, (8,))  # BitsPerSample
    return tuple(bits) if isinstance(bits, tuple) else (int(bits),)


def _to_channels(scaled: np.ndarray, channels: int, path: Path) -> torch.Tensor:
    """``H x W [x C]`` floats -> ``channels`` (1 or 3) x H x W: grey is repeated for RGB, RGB(A) becomes luma."""
    grey = scaled if scaled.ndim == 2 else None
    if grey is None and scaled.shape[-1] in (3, 4):
        rgb = scaled[..., :3]
        out = rgb if channels == 3 else (rgb @ _LUMA)[..., None]
    elif grey is not None or scaled.shape[-1] == 1:
        grey = grey if grey is not None else scaled[..., 0]
        out = np.repeat(grey[..., None], channels, axis=-1)
    else:
        raise DataError(f"{path}: {scaled.shape[-1]} channels cannot be read as {channels}; set preprocess.in_chans")
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1).astype(np.float32)))


def read_image(path: str | Path, channels: int | None = 3) -> torch.Tensor:
    """Read an image as ``C x H x W`` float32 in [0, 1] (see :func:`_read`); an image over Pillow's
    decompression-bomb limit is a :class:`DataError` (skipped and counted like any unreadable file)."""
    try:
        return _read(Path(path), channels)
    except Image.DecompressionBombError as err:
        raise DataError(
            f"{path}: {' '.join(str(err).split())} Raise the limit with data.max_image_pixels=<pixels> for real "
            "gigapixel images"
        ) from err


def _read(path: Path, channels: int | None) -> torch.Tensor:
    """``channels=3`` converts to RGB, ``channels=1`` to grey; any other number reads multi-channel TIFFs
    (``H x W x C`` or ``C x H x W``) with tifffile and checks the count; ``None`` keeps what the file has.
    """
    if channels in (1, 3):
        with Image.open(path) as im:
            if im.format == "TIFF" and max(_tiff_bits(im)) > 8 and im.mode not in _DEEP_MODES:
                import tifffile  # Pillow reduces 16-bit RGB TIFFs to 8 bits

                return _to_channels(_scale(tifffile.imread(path)), channels, path)
            if im.mode not in _DEEP_MODES:
                array = np.asarray(im.convert("RGB" if channels == 3 else "L"))
                array = array[..., None] if array.ndim == 2 else array
                return torch.from_numpy(np.ascontiguousarray(_scale(array).transpose(2, 0, 1)))
            deep = np.asarray(im)
        return _to_channels(_scale(deep), channels, path)
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

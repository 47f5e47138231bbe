"""Write tiled pyramidal TIFFs that OpenSlide reads (its "generic TIFF" format), tile by tile.

OpenSlide sees the levels only when each one is a top-level page: level 0, then the reduced levels with
``subfiletype=1`` (levels written as SubIFDs are invisible to it). The MPP goes into the resolution tags
(pixels per centimetre), where OpenSlide reads it as ``openslide.mpp-x``. Used to convert a large plain image,
and by the tests and benchmarks to make synthetic slides of any size with flat memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# read(x0, y0, w, h, downsample) -> h x w x 3 uint8: the level-0 box (x0, y0, w*ds, h*ds) at 1/ds resolution
RegionFn = Callable[[int, int, int, int, float], np.ndarray]


def write_pyramidal_tiff(
    path: str | Path,
    width: int,
    height: int,
    read: RegionFn,
    mpp: float | None = None,
    downsamples: Sequence[float] = (1, 4, 16),
    tile: int = 256,
    quality: int = 90,
) -> Path:
    """Write a ``width x height`` RGB slide whose pixels come from ``read``, one JPEG tile at a time.

    ``mpp=None`` writes no resolution (a slide without MPP metadata)."""
    import tifffile

    path = Path(path)
    resolution = {}
    if mpp is not None:
        resolution = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, ds in enumerate(downsamples):
            w, h = max(1, math.ceil(width / ds)), max(1, math.ceil(height / ds))
            tif.write(
                _tiles(read, w, h, ds, tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                subfiletype=0 if i == 0 else 1,
                **resolution,
            )
    return path


def _tiles(read: RegionFn, w: int, h: int, ds: float, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            tw, th = min(tile, w - x), min(tile, h - y)
            block = np.full((tile, tile, 3), 255, dtype=np.uint8)
            block[:th, :tw] = read(round(x * ds), round(y * ds), tw, th, ds)
            yield block


def array_reader(image: np.ndarray) -> RegionFn:
    """A :data:`RegionFn` over an in-memory ``H x W x 3`` array (levels resampled with Pillow's box filter)."""
    levels: dict[float, np.ndarray] = {1.0: image}

    def read(x0: int, y0: int, w: int, h: int, ds: float) -> np.ndarray:
        if ds not in levels:
            size = (max(1, math.ceil(image.shape[1] / ds)), max(1, math.ceil(image.shape[0] / ds)))
            levels[ds] = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        level = levels[ds]
        lx, ly = round(x0 / ds), round(y0 / ds)
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        part = level[ly : ly + h, lx : lx + w]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    return read


def to_pyramidal_tiff(
    image: str | Path | np.ndarray, path: str | Path, mpp: float | None, downsamples: Sequence[float] = (1, 4, 16)
) -> Path:
    """Convert a plain image (file or array) into a tiled pyramidal TIFF that OpenSlide reads, with its MPP."""
    if not isinstance(image, np.ndarray):
        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    height, width = image.shape[:2]
    return write_pyramidal_tiff(path, width, height, array_reader(image), mpp=mpp, downsamples=downsamples)

"""Synthetic slides for the tests (synthetic: no real multi-level pyramid, missing-MPP or truncated slide is in
../shared/data). Tissue is the real TCGA H&E region tiled into known rectangles on a slide-glass background, written
as a tiled JPEG pyramid that OpenSlide reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from domainfm.pathology.pyramid import array_reader, write_pyramidal_tiff
from PIL import Image

from tests.conftest import SHARED_DATA

TEXTURE = SHARED_DATA / "pathology" / "TCGA-HE-7130_1000px.png"

# Level-0 boxes (x0, y0, x1, y1) of the standard synthetic slide: 3072 x 2048 px at 0.5 um/px.
SIZE = (3072, 2048)
TISSUE = [(256, 256, 1792, 1792), (2048, 512, 2816, 1280)]
HOLE = (768, 768, 1536, 1536)  # 384 um square of glass inside the first piece: 0.147 mm2, kept as a hole
SPECK = (2304, 1600, 2496, 1792)  # 96 um square of tissue: 0.009 mm2, below the 0.065 mm2 minimum area


def he_texture() -> np.ndarray:
    with Image.open(TEXTURE) as im:
        return np.asarray(im.convert("RGB"))


def glass(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Slide-glass background: near-white with a little sensor noise."""
    rng = np.random.default_rng(seed)
    return np.clip(242 + rng.normal(0, 2, (height, width, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)


def paint(image: np.ndarray, box: tuple[int, int, int, int], texture: np.ndarray) -> None:
    x0, y0, x1, y1 = box
    reps = ((y1 - y0) // texture.shape[0] + 2, (x1 - x0) // texture.shape[1] + 2, 1)
    image[y0:y1, x0:x1] = np.tile(texture, reps)[: y1 - y0, : x1 - x0]


def standard_image() -> np.ndarray:
    """The synthetic slide's level 0: two tissue pieces, a hole in the first, a speck."""
    texture = he_texture()
    image = glass(SIZE[1], SIZE[0])
    for box in [*TISSUE, SPECK]:
        paint(image, box, texture)
    x0, y0, x1, y1 = HOLE
    image[y0:y1, x0:x1] = glass(y1 - y0, x1 - x0, seed=1)
    return image


def write_slide(path: Path, image: np.ndarray, mpp: float | None = 0.5, downsamples=(1, 4, 16)) -> Path:
    return write_pyramidal_tiff(path, image.shape[1], image.shape[0], array_reader(image), mpp, downsamples)


def expected_tiles(tile0: int = 256) -> set[tuple[int, int]]:
    """Grid tiles (level 0, side ``tile0``) inside the tissue pieces and not inside the hole: by hand."""
    out = set()
    for x0, y0, x1, y1 in TISSUE:
        for y in range(y0, y1, tile0):
            for x in range(x0, x1, tile0):
                hx0, hy0, hx1, hy1 = HOLE
                if not (hx0 <= x and x + tile0 <= hx1 and hy0 <= y and y + tile0 <= hy1):
                    out.add((x, y))
    return out

"""Tissue detection on a low-resolution thumbnail, CLAM-style: HSV saturation -> median blur -> Otsu threshold ->
morphological closing -> area and hole filtering; and the tissue fraction of each tile from the resulting mask.

Defaults and their sources (CLAM ``create_patches_fp.py`` / ``WholeSlideImage.segmentTissue``; TRIDENT):

- ``seg_mpp=8.0``: TRIDENT segments at 1.25x (8 um/px); CLAM uses the level nearest a 64x downsample.
  ``max_side=2048``: a slide longer than ``max_side * seg_mpp`` (16 mm at 8 um/px) is segmented at a coarser MPP
  (still finer than CLAM's 64x downsample up to 33 mm at 40x), so that memory stays bounded whatever the slide size.
- ``mthresh=7``: median blur kernel (CLAM default), in thumbnail pixels (made odd).
- ``sthresh=8``: saturation threshold (CLAM default, ``use_otsu=False`` there). Here Otsu is on by default as in
  CLAM's ``use_otsu=True`` mode, and ``sthresh`` is a floor under the Otsu threshold so that a slide that is nearly
  all background does not turn its noise into tissue.
- ``close=4``: closing kernel (CLAM default), in thumbnail pixels.
- ``min_area_mm2=0.065`` / ``min_hole_mm2=0.065``: CLAM expresses both in 512 x 512 level-0 patches; its biopsy
  preset (``a_t=1``, ``a_h=1``) is 0.065 mm2 at 20x. CLAM's resection default ``a_t=100`` (6.5 mm2 at 20x) would
  drop biopsies and whole tissue-microarray cores; set ``min_area_mm2=6.5`` to get it.
- ``max_n_holes=8``: the largest holes kept per tissue piece (CLAM default); smaller or extra holes are filled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import find_contours, regionprops
from skimage.morphology import closing


@dataclass(frozen=True)
class TissueParams:
    seg_mpp: float = 8.0
    max_side: int = 2048
    sthresh: int = 8
    use_otsu: bool = True
    mthresh: int = 7
    close: int = 4
    min_area_mm2: float = 0.065
    min_hole_mm2: float = 0.065
    max_n_holes: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


def saturation(rgb: np.ndarray, rows: int = 512) -> np.ndarray:
    """HSV saturation in 0..255 as OpenCV computes it: ``255 * (max - min) / max`` (0 where ``max == 0``).
    Computed ``rows`` at a time so that the wide integer temporaries stay small on large thumbnails."""
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    out = np.empty(hi.shape, dtype=np.uint8)
    for r in range(0, hi.shape[0], rows):
        h = hi[r : r + rows].astype(np.uint32)
        out[r : r + rows] = (255 * (h - lo[r : r + rows]) + h // 2) // np.maximum(h, 1)
    return out


def threshold(sat: np.ndarray, params: TissueParams) -> float:
    """The saturation above which a pixel is tissue: Otsu (floored at ``sthresh``) or ``sthresh``."""
    if not params.use_otsu or sat.min() == sat.max():
        return float(params.sthresh)
    counts, _ = np.histogram(sat, bins=256, range=(0, 256))  # blockwise: no full-size integer copy
    return max(float(threshold_otsu(hist=(counts, np.arange(256)))), float(params.sthresh))


def detect_tissue(thumb: np.ndarray, mpp: float, params: TissueParams | None = None) -> np.ndarray:
    """Boolean tissue mask of an ``H x W x 3`` uint8 thumbnail at ``mpp`` um/px.

    CLAM thresholds the median-blurred saturation; for an odd kernel that equals a majority vote of the
    thresholded pixels in the window, which is computed here with a box filter (O(1) per pixel instead of a
    median). The Otsu threshold is taken from the unblurred saturation histogram."""
    params = params or TissueParams()
    sat = saturation(thumb)
    mask = sat > threshold(sat, params)
    if params.mthresh > 1:
        k = params.mthresh | 1  # odd, as cv2.medianBlur requires
        votes = mask.astype(np.float32)
        mask = ndi.uniform_filter(votes, size=k, output=votes, mode="nearest") > 0.5
    if params.close > 0:
        pad = params.close
        mask = closing(np.pad(mask, pad), np.ones((pad, pad), bool))[pad:-pad, pad:-pad]
    return filter_regions(mask, mpp, params)


def filter_regions(mask: np.ndarray, mpp: float, params: TissueParams) -> np.ndarray:
    """Drop tissue pieces under ``min_area_mm2`` (area without holes); per piece keep the ``max_n_holes`` largest
    holes of at least ``min_hole_mm2`` and fill the others."""
    px_mm2 = (mpp / 1000.0) ** 2
    out = np.zeros_like(mask, dtype=bool)
    for piece in regionprops(_label(mask)):
        if piece.area * px_mm2 < params.min_area_mm2:
            continue
        filled = piece.image_filled.copy()
        holes = regionprops(_label(filled & ~piece.image, connectivity=1))
        for hole in sorted(holes, key=lambda h: h.area, reverse=True)[: params.max_n_holes]:
            if hole.area * px_mm2 >= params.min_hole_mm2:
                h0, w0, h1, w1 = hole.bbox
                filled[h0:h1, w0:w1] &= ~hole.image
        r0, c0, r1, c1 = piece.bbox
        out[r0:r1, c0:c1] |= filled
    return out


def mask_to_polygons(mask: np.ndarray, scale: tuple[float, float]) -> list:
    """Shapely polygons (with holes) of a tissue mask, in level-0 pixels; ``scale`` = level-0 px per mask px (x, y)."""
    from shapely.geometry import Polygon

    sx, sy = scale
    polygons = []
    for piece in regionprops(_label(mask)):
        r0, c0 = piece.bbox[:2]

        def ring(image: np.ndarray, r0: int = r0, c0: int = c0) -> np.ndarray | None:
            contours = find_contours(np.pad(image, 1).astype(np.uint8), 0.5, fully_connected="high")
            if not contours:
                return None
            rc = max(contours, key=len)
            return np.stack([(rc[:, 1] - 0.5 + c0) * sx, (rc[:, 0] - 0.5 + r0) * sy], axis=1)

        shell = ring(piece.image_filled)
        if shell is None or len(shell) < 4:
            continue
        hole_labels = _label(piece.image_filled & ~piece.image, connectivity=1)
        holes = [ring(hole_labels[sl] == i + 1, r0 + sl[0].start, c0 + sl[1].start) for i, sl in _objects(hole_labels)]
        polygon = Polygon(shell, [h for h in holes if h is not None and len(h) >= 4]).buffer(0)
        polygon = polygon.simplify(0.5 * max(sx, sy), preserve_topology=True)
        if not polygon.is_empty:
            polygons.extend(getattr(polygon, "geoms", [polygon]))
    return polygons


def _label(mask: np.ndarray, connectivity: int = 2) -> np.ndarray:
    """Connected components (``connectivity`` 2: 8-connected, 1: 4-connected) as int32; skimage's ``label`` gives
    int64, twice the memory."""
    structure = ndi.generate_binary_structure(2, connectivity)
    return ndi.label(mask, structure=structure, output=np.int32)[0]


def _objects(labels: np.ndarray) -> list[tuple[int, tuple[slice, slice]]]:
    return [(i, sl) for i, sl in enumerate(ndi.find_objects(labels)) if sl is not None]


def rasterize(polygons: list, shape: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """Boolean mask of ``shape`` (rows, cols) whose pixel centres fall inside ``polygons`` (level-0 coordinates)."""
    from skimage.draw import polygon as fill

    sx, sy = scale
    mask = np.zeros(shape, dtype=bool)
    for poly in polygons:
        for part in getattr(poly, "geoms", [poly]):
            ext = np.asarray(part.exterior.coords)
            rr, cc = fill(ext[:, 1] / sy - 0.5, ext[:, 0] / sx - 0.5, shape)
            region = np.zeros(shape, dtype=bool)
            region[rr, cc] = True
            for interior in part.interiors:
                hole = np.asarray(interior.coords)
                rr, cc = fill(hole[:, 1] / sy - 0.5, hole[:, 0] / sx - 0.5, shape)
                region[rr, cc] = False
            mask |= region
    return mask


def tile_tissue_fraction(mask: np.ndarray, coords: np.ndarray, size0: int, scale: tuple[float, float]) -> np.ndarray:
    """Fraction of each level-0 tile ``(x, y, size0)`` covered by ``mask`` (the part outside the mask counts as
    background), from an integral image: O(1) per tile."""
    if len(coords) == 0:
        return np.zeros(0)
    sx, sy = scale
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)  # max_side**2 fits in int32
    np.cumsum(mask, axis=0, dtype=np.int32, out=integral[1:, 1:])
    np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
    x0 = np.clip(np.round(coords[:, 0] / sx).astype(np.int64), 0, mask.shape[1])
    y0 = np.clip(np.round(coords[:, 1] / sy).astype(np.int64), 0, mask.shape[0])
    x1 = np.clip(np.maximum(np.round((coords[:, 0] + size0) / sx).astype(np.int64), x0 + 1), 0, mask.shape[1])
    y1 = np.clip(np.maximum(np.round((coords[:, 1] + size0) / sy).astype(np.int64), y0 + 1), 0, mask.shape[0])
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = max(1.0, (size0 / sx) * (size0 / sy))
    return np.clip(inside / area, 0.0, 1.0)

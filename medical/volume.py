"""One canonical in-memory volume: voxels in RAS order with their voxel -> world (RAS, mm) affine.

Every reader of :mod:`domainfm.medical.readers` returns a :class:`Volume` whose array axes run Right, Anterior,
Superior (``nibabel.as_closest_canonical``'s convention: array axis ``i`` points most nearly along world axis
``i`` with a positive direction). An oblique acquisition keeps its exact direction in the affine; only the axis
order and signs are changed, never the voxels' values or positions. Reorientation uses nibabel's
``io_orientation`` / ``apply_orientation``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM / ITK / NRRD "left-posterior-superior" world -> RAS


@dataclass
class Volume:
    """``array``: ``(X, Y, Z)`` voxels (a 2D image is ``(X, Y, 1)``); ``affine``: 4x4, voxel index -> RAS mm."""

    array: np.ndarray
    affine: np.ndarray
    modality: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def direction(self) -> np.ndarray:
        """3x3 unit direction cosines (columns: array axes in RAS)."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def orientation(self) -> str:
        """Axis codes of the array, e.g. ``RAS`` (nibabel's ``aff2axcodes``)."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    def canonical(self) -> Volume:
        """The same voxels with axes reordered / flipped to RAS (``nibabel.as_closest_canonical``'s rule)."""
        array, affine = to_ras(self.array, self.affine)
        return Volume(array, affine, self.modality, dict(self.meta))


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder / flip the first three axes of ``array`` so they run R, A, S; the affine follows."""
    from nibabel import orientations as ornt

    transform, new_affine = ras_orientation(affine, array.shape[:3])
    if transform is None:  # already RAS
        return array, affine
    out = ornt.apply_orientation(array, transform)
    return out.copy(order="K"), new_affine  # positive strides, the source's memory order kept (fast copy)


def ras_orientation(affine: np.ndarray, shape) -> tuple[np.ndarray | None, np.ndarray]:
    """nibabel's orientation transform (rows: input axis -> ``(output axis, flip)``) that takes an array of
    ``shape`` with ``affine`` to RAS, and the RAS affine; ``(None, affine)`` when it is RAS already."""
    from nibabel import orientations as ornt

    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(("R", "A", "S")))
    if np.array_equal(transform, ornt.axcodes2ornt(("R", "A", "S"))):
        return None, affine
    return transform, affine @ ornt.inv_ornt_aff(transform, tuple(shape)[:3])


def oriented_buffer(shape, transform: np.ndarray | None, dtype, order: str = "F") -> tuple[np.ndarray, np.ndarray]:
    """``(out, source_view)``: ``out`` is an empty array already in the orientation ``transform`` gives (positive
    strides, the memory order ``order`` of the source axes), ``source_view`` a view of it in the source's axes:
    filling ``source_view`` like the unoriented array gives ``out == nibabel.apply_orientation(source, transform)``
    with no copy of the volume."""
    base = np.empty(shape, dtype, order=order)
    if transform is None:
        return base, base
    out = base.transpose(tuple(int(a) for a in np.argsort(transform[:, 0])) + tuple(range(3, base.ndim)))
    flips = tuple(slice(None, None, -1) if f < 0 else slice(None) for f in transform[:, 1])
    return out, base[flips]


def ras_affine_from_lps(direction: np.ndarray, spacing, origin) -> np.ndarray:
    """The RAS affine of an ITK/DICOM-style geometry: LPS ``direction`` (3x3, columns = index axes), ``spacing``
    per index axis, LPS ``origin``."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, float) * np.asarray(spacing, float)[None, :]
    affine[:3, 3] = np.asarray(origin, float)
    return LPS_TO_RAS @ affine

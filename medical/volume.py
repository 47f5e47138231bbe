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

    current = ornt.io_orientation(affine)
    target = ornt.axcodes2ornt(("R", "A", "S"))
    transform = ornt.ornt_transform(current, target)
    if np.array_equal(transform, ornt.axcodes2ornt(("R", "A", "S"))):  # already RAS
        return array, affine
    out = ornt.apply_orientation(array, transform)
    new_affine = affine @ ornt.inv_ornt_aff(transform, array.shape[:3])
    return out.copy(order="K"), new_affine  # positive strides, the source's memory order kept (fast copy)


def ras_affine_from_lps(direction: np.ndarray, spacing, origin) -> np.ndarray:
    """The RAS affine of an ITK/DICOM-style geometry: LPS ``direction`` (3x3, columns = index axes), ``spacing``
    per index axis, LPS ``origin``."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, float) * np.asarray(spacing, float)[None, :]
    affine[:3, 3] = np.asarray(origin, float)
    return LPS_TO_RAS @ affine

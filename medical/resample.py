"""Resampling volumes: a stack with gaps, irregular spacing or gantry tilt onto a regular orthogonal grid, and any
volume to a target voxel size (linear interpolation, ``scipy.ndimage``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from domainfm.medical.volume import LPS_TO_RAS, Volume


def regular_grid(volume: Volume, geometry) -> Volume:
    """``volume`` (array ``(j, i, k)`` in acquisition order, as :func:`~domainfm.medical.dicom.read_series` builds
    it) on slices at a regular step along the slice normal (``geometry.step``). Target slice ``t`` is
    interpolated linearly between the two acquired slices around it; with gantry tilt the in-plane shift of each
    slice is undone (``scipy.ndimage.shift``, linear, outside = the volume minimum). The result's affine is
    orthogonal: ``P0 + j*dc*r + i*dr*c + t*step*n`` (LPS)."""
    from scipy import ndimage

    slices = geometry.slices
    positions = np.stack([s.position for s in slices])
    o = slices[0].orientation
    r, c = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
    normal = np.cross(r, c)
    along = positions @ normal
    step = geometry.step
    count = int(round((along[-1] - along[0]) / step)) + 1
    targets = along[0] + step * np.arange(count)
    fraction = np.interp(targets, along, np.arange(len(along)))
    shifts = positions - positions[0] - np.outer(along - along[0], normal)  # in-plane offset of each slice (mm)
    dr, dc = slices[0].pixel_spacing
    data = volume.array.astype(np.float32)
    fill = float(data.min())
    out = np.empty(data.shape[:2] + (count,), np.float32)
    for t, f in enumerate(fraction):
        lo = int(np.floor(f))
        hi = min(lo + 1, data.shape[2] - 1)
        w = f - lo
        plane = data[:, :, lo] * (1 - w) + data[:, :, hi] * w
        shift = shifts[lo] * (1 - w) + shifts[hi] * w
        offset = (float(shift @ r) / dc, float(shift @ c) / dr)  # (j, i) voxels the acquired plane is shifted by
        if abs(offset[0]) > 1e-6 or abs(offset[1]) > 1e-6:
            plane = ndimage.shift(plane, offset, order=1, mode="constant", cval=fill)
        out[:, :, t] = plane
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = r * dc, c * dr, normal * step
    affine[:3, 3] = positions[0]
    meta = {**volume.meta, "resampled": "regular grid"}
    return Volume(out, LPS_TO_RAS @ affine, volume.modality, meta)


def resample_to_spacing(volume: Volume, spacing: Sequence[float], order: int = 1) -> Volume:
    """``volume`` at voxel size ``spacing`` (mm, per array axis), voxel (0, 0, 0) kept in place, the same
    field of view (rounded to whole voxels). ``order=0`` for label maps."""
    from scipy import ndimage

    old = np.asarray(volume.spacing, float)
    new = np.asarray(list(spacing), float)
    if np.allclose(old, new, rtol=1e-4):
        return volume
    shape = np.maximum(1, np.round(np.asarray(volume.shape[:3]) * old / new)).astype(int)
    ratio = new / old
    src = volume.array if order == 0 else volume.array.astype(np.float32)
    out = ndimage.affine_transform(src, ratio, output_shape=tuple(shape), order=order, mode="nearest")
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] * ratio[None, :]
    return Volume(out, affine, volume.modality, {**volume.meta, "spacing": [float(x) for x in new]})

"""Training data from volumes: 2D slices (axial, coronal, sagittal or all three) for 2D backbones.

Volumes come from an index folder (``domainfm index ... index.cache=true``: the manifest's cached volumes, failed
series left out) or a folder of NIfTI / NRRD files (recursive). Shapes are read from headers once (the manifest, or
nibabel / pynrrd headers), so the slice list exists before any voxel is decoded. A worker keeps its last
``cache_volumes`` decoded volumes; for archives of large CT, index with ``index.format=nii`` (uncompressed): then
nibabel reads one slice lazily instead of decompressing the volume. Every volume is in RAS (``read_volume``):
axial slices are the ``(x, y)`` planes at fixed ``z``, returned with anterior up and the patient's right on the left
(radiological display); coronal and sagittal ones with superior up."""

from __future__ import annotations

import csv
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.errors import DataError
from domainfm.medical.intensity import Intensity
from domainfm.medical.readers import NIFTI, NRRD, read_volume
from torch.utils.data import Dataset

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def list_volumes(root: str | Path) -> list[dict]:
    """``[{"path", "id", "modality", "shape"}]`` of an index folder (``manifest.csv`` with cached volumes) or a
    folder of NIfTI / NRRD files; shapes from the manifest or the file headers (no voxels read)."""
    root = Path(root)
    manifest = root / "manifest.csv"
    if manifest.is_file():
        with manifest.open() as f:
            rows = [r for r in csv.DictReader(f) if r["status"] != "failed"]
        cached = [r for r in rows if r.get("volume")]
        if rows and not cached:
            raise DataError(
                f"data.root={root}: the index has no cached volumes; rerun domainfm index with index.cache=true"
            )
        return [{"path": root / r["volume"], "id": r["id"], "modality": r["modality"],
                 "shape": tuple(int(v) for v in r["shape"].split("x"))} for r in cached]  # fmt: skip
    if not root.is_dir():
        raise DataError(f"data.root={root}: not a folder (an index written by domainfm index, or NIfTI / NRRD files)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(NIFTI + NRRD))
    if not files:
        raise DataError(f"data.root={root}: no manifest.csv and no .nii / .nii.gz / .nrrd files")
    return [{"path": f, "id": str(f.relative_to(root)), "modality": "", "shape": _header_shape(f)} for f in files]


def _header_shape(path: Path) -> tuple[int, ...]:
    if path.name.lower().endswith(NRRD):
        import nrrd

        return tuple(int(s) for s in nrrd.read_header(str(path))["sizes"])
    import nibabel as nib

    return tuple(int(s) for s in nib.load(str(path)).shape[:3])


class _VolumeReader:
    """Volumes of ``root`` (see :func:`list_volumes`) decoded on demand, intensity-normalised, the worker's last
    ``cache_volumes`` kept."""

    def _setup(self, root, intensity, modality, in_chans, cache_volumes: int, spacing=None, foreground=False) -> None:
        self.root = Path(root)
        self.foreground = bool(foreground)
        self.intensity = intensity if isinstance(intensity, Intensity) else Intensity(**(intensity or {}))
        self.volumes = list_volumes(root)
        self.modality = modality
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        mods = {self._modality(v) for v in self.volumes}
        counts = {self.intensity.channels(m) for m in mods}
        if len(counts) > 1:
            raise DataError(f"data.root={root}: modalities {sorted(mods)} give different channel counts; set modality=")
        self.in_chans = counts.pop()
        if in_chans is not None and in_chans != self.in_chans:
            raise DataError(
                f"data.root={root}: the intensity settings give {self.in_chans} channel(s), the config expects "
                f"{in_chans} (preprocess.in_chans)"
            )
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_volumes = int(cache_volumes)

    def _modality(self, vol: dict) -> str:
        return self.modality or vol["modality"] or "MR"

    def volume(self, v: int) -> np.ndarray:
        """Volume ``v`` normalised, ``(C, X, Y, Z)``, from the worker's small cache."""
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        info = self.volumes[v]
        vol = read_volume(info["path"])
        if vol.shape[:3] != tuple(info["shape"][:3]):
            raise DataError(f"{info['id']}: shape {vol.shape} differs from the index's {info['shape']}; reindex")
        if self.spacing is not None and not np.allclose(vol.spacing, self.spacing, rtol=1e-3):
            from domainfm.medical.resample import resample_to_spacing

            vol = resample_to_spacing(vol, self.spacing)
        out = self.intensity(vol.array, self._modality(info))
        if self.foreground:
            out = crop_foreground(out)
        self._cache[v] = out
        while len(self._cache) > self.cache_volumes:
            self._cache.popitem(last=False)
        return out


class VolumeSlices(_VolumeReader, Dataset):
    """Every slice along ``axis`` (``axial``, ``coronal``, ``sagittal`` or ``all``) of every volume under
    ``root``, intensity-normalised by ``intensity`` (CT windows as channels, MR percentile + z-score) and
    returned as ``C x H x W`` float tensors. ``modality`` overrides the manifest's (``CT``, ``MR``; needed for
    folders of CT NIfTI, whose headers do not say: such folders default to MR).
    """

    def __init__(
        self,
        root: str | Path,
        axis: str = "axial",
        intensity: Intensity | dict | None = None,
        modality: str | None = None,
        in_chans: int | None = None,
        cache_volumes: int = 2,
    ):
        if axis != "all" and axis not in AXES:
            raise DataError(f"axis={axis!r}; choose axial, coronal, sagittal or all")
        self.axis = axis
        self._setup(root, intensity, modality, in_chans, cache_volumes)
        axes = list(AXES.values()) if axis == "all" else [AXES[axis]]
        self.items = [(v, a, k) for v, vol in enumerate(self.volumes) for a in axes for k in range(vol["shape"][a])]

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        v, a, k = self.items[index]
        return f"{self.volumes[v]['id']} slice {k} of axis {a}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        v, a, k = self.items[index]
        plane = np.take(self.volume(v), k, axis=a + 1)  # C x (two remaining axes, RAS order)
        # rows: anterior / superior up; columns: the patient's right on the left (radiological display)
        image = torch.from_numpy(np.ascontiguousarray(np.flip(plane.transpose(0, 2, 1), axis=(1, 2))))
        return {"image": image, "meta": {"volume": self.volumes[v]["id"], "axis": a, "slice": k}}

    def preprocess_info(self, img_size: int | None = None) -> dict:
        """What ``domainfm pretrain`` records in the export: intensity, slicing, modality."""
        mods = sorted({self._modality(v) for v in self.volumes})
        return {"intensity": self.intensity.to_dict(), "slice_axis": self.axis, "modality": mods}


def crop_foreground(x: np.ndarray) -> np.ndarray:
    """``x (C, X, Y, Z)`` normalised, cropped to the bounding box of the voxels above the volume's minimum in the
    first channel: SelfMedMAE's / monai's ``CropForegroundd(source_key="image")`` after the intensity scaling (CT:
    HU above the window's lower bound, i.e. the body without the air around it; MR: above the lower percentile
    clip, i.e. the nonzero head / body). The box is monai's ``generate_spatial_bounding_box``; an empty
    foreground keeps the whole volume."""
    from monai.transforms.utils import generate_spatial_bounding_box

    mask = x[:1] > x[0].min()
    if not mask.any():
        return x
    start, end = generate_spatial_bounding_box(mask)
    return np.ascontiguousarray(x[:, start[0] : end[0], start[1] : end[1], start[2] : end[2]])


def _triple(size) -> tuple[int, int, int]:
    return (int(size),) * 3 if isinstance(size, int) else tuple(int(s) for s in size)


class VolumePatches(_VolumeReader, Dataset):
    """Random 3D patches (``C x X x Y x Z``, RAS axes) for 3D backbones: ``patches_per_volume`` per volume and
    epoch, intensity-normalised as :class:`VolumeSlices`, then ``(x - mean) / std``.

    A patch queue as torchio's ``Queue``: :meth:`sample_groups` makes the engine's stream take the volumes
    ``queue_volumes`` at a time and shuffle their patches together, and each worker caches that many decoded
    volumes, so a volume is decoded about once per epoch and worker however long the archive. Patch positions
    are drawn uniformly (torchio's ``UniformSampler``) from the sample's seeded RNG, so a resumed run draws the
    same patches; volumes smaller than the patch are padded with their minimum (the background). Augmentation
    (SelfMedMAE's MAE-3D, Zhou et al. 2023: ``RandFlipd`` / ``RandRotate90d``, prob 0.2 each): ``flip`` is the
    probability of a flip per axis, ``rot90`` of one 90-degree turn in the axial (x, y) plane (square patches).
    ``spacing``: resample each volume to this spacing (mm) when read (an index written with ``index.spacing``
    already is). ``foreground``: crop each volume to its foreground first (:func:`crop_foreground`)."""

    def __init__(
        self,
        root: str | Path,
        patch_size=96,
        patches_per_volume: int = 8,
        intensity: Intensity | dict | None = None,
        modality: str | None = None,
        in_chans: int | None = None,
        mean: float | list[float] = 0.0,
        std: float | list[float] = 1.0,
        spacing: list[float] | None = None,
        flip: float = 0.0,
        rot90: float = 0.0,
        queue_volumes: int = 8,
        foreground: bool = False,
    ):
        self.patch = _triple(patch_size)
        if rot90 and self.patch[0] != self.patch[1]:
            raise DataError(f"rot90 turns the axial plane: patch_size {self.patch} needs equal x and y")
        self._setup(root, intensity, modality, in_chans, queue_volumes, spacing, foreground)
        self.per_volume, self.queue_volumes = int(patches_per_volume), int(queue_volumes)
        self.flip, self.rot90 = float(flip), float(rot90)
        chans = self.in_chans
        self.mean = np.broadcast_to(np.asarray(mean, np.float32).reshape(-1), (chans,)).reshape(chans, 1, 1, 1)
        self.std = np.broadcast_to(np.asarray(std, np.float32).reshape(-1), (chans,)).reshape(chans, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.volumes) * self.per_volume

    def sample_groups(self) -> tuple[torch.Tensor, int]:
        """``(volume of each sample, queue length)``: the engine's patch-queue order (``StreamSampler``)."""
        return torch.arange(len(self)) // self.per_volume, self.queue_volumes

    def describe(self, index: int) -> str:
        return f"{self.volumes[index // self.per_volume]['id']} patch {index % self.per_volume}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        v = index // self.per_volume
        vol = self.volume(v)
        pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(self.patch, vol.shape[1:])]
        if any(after for _, after in pad):
            vol = np.pad(vol, pad, constant_values=float(vol.min()))
        start = [int(torch.randint(0, s - p + 1, ()).item()) for s, p in zip(vol.shape[1:], self.patch)]
        patch = vol[:, start[0] : start[0] + self.patch[0], start[1] : start[1] + self.patch[1],
                    start[2] : start[2] + self.patch[2]]  # fmt: skip
        flips = [a + 1 for a in range(3) if self.flip and torch.rand(()) < self.flip]
        if flips:
            patch = np.flip(patch, axis=flips)
        if self.rot90 and torch.rand(()) < self.rot90:
            patch = np.rot90(patch, 1, axes=(1, 2))
        image = torch.from_numpy(((patch - self.mean) / self.std).astype(np.float32))
        return {"image": image, "meta": {"volume": self.volumes[v]["id"], "start": start}}

    def preprocess_info(self, img_size=None) -> dict:
        """What ``domainfm pretrain`` records in the export: intensity, modality, spacing, patch size."""
        mods = sorted({self._modality(v) for v in self.volumes})
        info = {"intensity": self.intensity.to_dict(), "modality": mods, "patch_size_voxels": list(self.patch)}
        if self.foreground:
            info["foreground"] = True
        if self.spacing is not None:
            info["spacing"] = list(self.spacing)
        return info

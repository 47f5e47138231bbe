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


class VolumeSlices(Dataset):
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
        self.root, self.axis = Path(root), axis
        self.intensity = intensity if isinstance(intensity, Intensity) else Intensity(**(intensity or {}))
        self.volumes = list_volumes(root)
        self.modality = modality
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
        axes = list(AXES.values()) if axis == "all" else [AXES[axis]]
        self.items = [(v, a, k) for v, vol in enumerate(self.volumes) for a in axes for k in range(vol["shape"][a])]
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_volumes = int(cache_volumes)

    def _modality(self, vol: dict) -> str:
        return self.modality or vol["modality"] or "MR"

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        v, a, k = self.items[index]
        return f"{self.volumes[v]['id']} slice {k} of axis {a}"

    def volume(self, v: int) -> np.ndarray:
        """Volume ``v`` normalised, ``(C, X, Y, Z)``, from the worker's small cache."""
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        info = self.volumes[v]
        vol = read_volume(info["path"])
        if vol.shape[:3] != tuple(info["shape"][:3]):
            raise DataError(f"{info['id']}: shape {vol.shape} differs from the index's {info['shape']}; reindex")
        out = self.intensity(vol.array, self._modality(info))
        self._cache[v] = out
        while len(self._cache) > self.cache_volumes:
            self._cache.popitem(last=False)
        return out

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

"""Point-cloud training data: every cloud under a folder (any format :func:`~domainfm.three_d.points.read_points`
reads, recursively), or the shapes of an array file holding many (``S x D x H x W`` voxel grids such as the
ModelNet10 voxel sets, ``S x N x 3+`` point sets), prepared as Point-MAE's pretraining does.

Per sample (the sample's seeded RNG, so a resumed run sees the same clouds and masks): ``n_points`` points
(``sampling``: ``random`` as Point-MAE's ShapeNet loader, or ``fps``), centred and scaled into the unit sphere
(``pc_norm``), then ``PointcloudScaleAndTranslate`` when ``augment``: per axis a scale ``U(scale)`` (2/3..3/2) and
a shift ``U(-translate, translate)`` (0.2); ``rotate`` adds a random rotation about the up axis (ours, off by
default). Each worker keeps its last ``cache_clouds`` decoded files (a mesh's surface sample is seeded, so the
cache changes nothing but the speed). With ``mask_group`` the Point-MAE mask (``mask_ratio`` of ``mask_group``
patches) is drawn too."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.errors import DataError
from domainfm.three_d.points import (
    SUFFIXES,
    _load_array,
    _suffix,
    normalize_unit_sphere,
    read_points,
    subsample,
    voxel_surface_points,
)
from torch.utils.data import Dataset


def list_clouds(root: str | Path) -> list[Path]:
    """Every point-cloud file under ``root`` (a folder, or one file)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data.root={root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and _suffix(p) in SUFFIXES)
    if not files:
        raise DataError(f"data.root={root}: no point cloud files ({', '.join(SUFFIXES)})")
    return files


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The array shape in a ``.npy`` (or ``.npy.gz``) header, without reading the data."""
    import gzip

    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        return tuple(read(f)[0])


def _occupancy(array: np.ndarray) -> bool:
    """An occupancy grid (bool, or only 0 / 1 values), not a stack of point sets with coordinates."""
    return array.dtype == bool or bool(np.isin(array, (0, 1)).all())


class PointClouds(Dataset):
    def __init__(
        self,
        root: str | Path,
        n_points: int = 1024,
        sampling: str = "random",
        augment: bool = True,
        scale: tuple[float, float] = (2 / 3, 3 / 2),
        translate: float = 0.2,
        rotate: bool = False,
        mask_group: int | None = None,
        mask_ratio: float = 0.6,
        surface_points: int = 8192,
        cache_clouds: int = 4096,
    ):
        if sampling not in ("random", "fps"):
            raise DataError(f"sampling={sampling!r}; choose random or fps")
        self.n_points, self.sampling, self.augment = int(n_points), sampling, bool(augment)
        self.scale, self.translate, self.rotate = tuple(float(s) for s in scale), float(translate), bool(rotate)
        self.mask_group, self.mask_ratio, self.surface_points = mask_group, float(mask_ratio), int(surface_points)
        self.items: list[tuple[Path, int | None]] = []
        self._read: OrderedDict[int, np.ndarray] = OrderedDict()  # the worker's last decoded files
        self.cache_clouds = int(cache_clouds)
        self._shapes: dict[Path, list[np.ndarray]] = {}
        for path in list_clouds(root):
            if _suffix(path) in (".npy", ".npz") and self._many(path):
                self.items += [(path, i) for i in range(len(self._shapes[path]))]
            else:
                self.items.append((path, None))

    def _many(self, path: Path) -> bool:
        """An array of several shapes (``S x D x H x W`` grids or ``S x N x 3+`` sets) is read once, as points; a
        ``.npy`` of one cloud is told by its header alone (its points are read when drawn)."""
        try:
            if _suffix(path) == ".npy" and len(_npy_shape(path)) < 3:
                return False
            array = _load_array(path, _suffix(path))
        except Exception:
            return False  # unreadable: one item, skipped (and named) when drawn
        if array.ndim == 5 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim == 4:
            self._shapes[path] = [voxel_surface_points(a) for a in array]
        elif array.ndim == 3 and array.shape[2] >= 3 and not _occupancy(array):  # one D x H x W grid is one shape
            self._shapes[path] = [a[:, :3].astype(np.float32) for a in array]
        else:
            return False
        return True

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        path, i = self.items[index]
        return str(path) if i is None else f"{path}[{i}]"

    def points(self, index: int) -> np.ndarray:
        """The raw cloud ``(N, 3)`` of sample ``index``."""
        path, i = self.items[index]
        if i is None:
            if index in self._read:
                self._read.move_to_end(index)
                return self._read[index]
            xyz = read_points(path, self.surface_points).xyz  # meshes are sampled with a fixed seed: cacheable
            self._read[index] = xyz
            while len(self._read) > self.cache_clouds:
                self._read.popitem(last=False)
            return xyz
        xyz = self._shapes[path][i]
        if len(xyz) == 0:
            raise DataError(f"{path}[{i}]: the shape is empty (no occupied voxels / points)")
        return xyz

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.prepare(index, np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item())))

    def prepare(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Sample ``index`` prepared with ``rng`` (training: from the sample's seed; evaluation: fixed)."""
        xyz = normalize_unit_sphere(subsample(self.points(index), self.n_points, self.sampling, rng))
        if self.augment:
            if self.rotate:
                a = rng.uniform(0, 2 * np.pi)
                c, s = np.cos(a), np.sin(a)
                xyz = xyz @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float32).T  # about y (up)
            xyz = xyz * rng.uniform(*self.scale, size=3) + rng.uniform(-self.translate, self.translate, size=3)
        sample = {"points": torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))}
        if self.mask_group:
            g, m = int(self.mask_group), int(self.mask_ratio * int(self.mask_group))
            mask = np.zeros(g, dtype=bool)
            mask[rng.permutation(g)[:m]] = True
            sample["mask"] = torch.from_numpy(mask)
        return sample

    def preprocess_info(self, img_size=None) -> dict:
        """What ``domainfm pretrain`` records in the export."""
        return {"n_points": self.n_points, "normalization": "unit_sphere", "sampling": self.sampling}

"""Point clouds from files: :func:`read_points` -> :class:`PointCloud` (``xyz (N, 3)`` float32 and per-point
features), and the preparation Point-MAE applies before grouping.

Readers (libraries, not hand-written parsers): ``.ply`` with plyfile (vertices and their properties), ``.obj`` /
``.off`` / ``.stl`` with trimesh; any file with faces (a mesh, PLY included) gives ``surface_points`` points sampled
uniformly on its surface (trimesh, seeded: as ModelNet / ShapeNet point sets are made), ``surface_points=0`` its
vertices with their properties; ``.las`` / ``.laz``
with laspy (LAZ through lazrs; coordinates scaled and offset, ``intensity``, ``classification``, ``rgb`` kept),
``.npy`` / ``.npz`` / ``.txt`` / ``.xyz`` arrays (``N x 3+``: columns after xyz kept as ``extra``; ModelNet40's
resampled ``.txt`` has normals there), and occupancy voxel grids (``D x H x W`` arrays, e.g. ModelNet10 voxelised:
the centres of the occupied voxels on the surface, i.e. with an empty 6-neighbour).

Preparation (Point-MAE's ``pc_norm`` and samplers): centre on the centroid and scale into the unit sphere;
subsample to ``n`` points by farthest point sampling (Point-MAE's ModelNet loader) or at random; a cloud with
fewer points is padded by repeating random points."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from domainfm.errors import DataError

MESHES = (".obj", ".off", ".stl")
ARRAYS = (".npy", ".npz", ".txt", ".xyz", ".pts")
SUFFIXES = (".ply", ".las", ".laz", *MESHES, *ARRAYS)


@dataclass
class PointCloud:
    """``xyz (N, 3)`` float32 and per-point ``features`` (name -> ``(N, ...)`` array)."""

    xyz: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.xyz)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".npy" if name.endswith(".npy.gz") else path.suffix.lower()


def read_points(path: str | Path, surface_points: int = 8192, seed: int = 0) -> PointCloud:
    """The point cloud of ``path`` (see the module docstring); meshes give ``surface_points`` surface samples (0:
    their vertices)."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: not a point cloud file ({', '.join(SUFFIXES)})")
    try:
        cloud = _read(path, suffix, surface_points, seed)
    except DataError:
        raise
    except Exception as e:  # a truncated or corrupt file: one line naming it
        raise DataError(f"{path}: unreadable point cloud ({type(e).__name__}: {e})") from e
    check_cloud(cloud, path)
    return cloud


def _read(path: Path, suffix: str, surface_points: int, seed: int) -> PointCloud:
    if suffix == ".ply":
        from plyfile import PlyData

        ply = PlyData.read(str(path))
        if surface_points and "face" in ply and len(ply["face"].data):
            return _surface(path, surface_points, seed)
        vertex = ply["vertex"].data
        names = vertex.dtype.names
        xyz = np.stack([vertex[a] for a in ("x", "y", "z")], axis=1).astype(np.float32)
        features = {}
        if {"red", "green", "blue"} <= set(names):
            features["rgb"] = np.stack([vertex[c] for c in ("red", "green", "blue")], axis=1)
        if {"nx", "ny", "nz"} <= set(names):
            features["normals"] = np.stack([vertex[c] for c in ("nx", "ny", "nz")], axis=1).astype(np.float32)
        for name in set(names) - {"x", "y", "z", "red", "green", "blue", "nx", "ny", "nz"}:
            features[name] = np.asarray(vertex[name])
        return PointCloud(xyz, features)
    if suffix in (".las", ".laz"):
        import laspy

        las = laspy.read(str(path))
        xyz = np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1)
        xyz = (xyz - xyz.mean(0)).astype(np.float32)  # georeferenced coordinates: float64 -> centred float32
        dims = set(las.point_format.dimension_names)
        features = {k: np.asarray(las[k]) for k in ("intensity", "classification") if k in dims}
        if {"red", "green", "blue"} <= dims:
            features["rgb"] = np.stack([np.asarray(las[c]) for c in ("red", "green", "blue")], axis=1)
        return PointCloud(xyz, features)
    if suffix in MESHES:
        return _surface(path, surface_points, seed)
    array = _load_array(path, suffix)
    if array.ndim == 3:
        return PointCloud(voxel_surface_points(array))
    if array.ndim != 2 or array.shape[1] < 3:
        raise DataError(f"{path}: array of shape {array.shape}; a point cloud is N x 3+ (or a D x H x W voxel grid)")
    extra = {"extra": array[:, 3:].astype(np.float32)} if array.shape[1] > 3 else {}
    return PointCloud(array[:, :3].astype(np.float32), extra)


def _surface(path: Path, n: int, seed: int) -> PointCloud:
    """``n`` points uniformly on the surface of the mesh in ``path`` (its vertices when ``n`` is 0 or it has no
    faces)."""
    import trimesh

    mesh = trimesh.load(str(path), force="mesh", process=False)
    if not n or len(mesh.faces) == 0:
        return PointCloud(np.asarray(mesh.vertices, np.float32))
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return PointCloud(np.asarray(points, np.float32))


def _load_array(path: Path, suffix: str) -> np.ndarray:
    if suffix in (".txt", ".xyz", ".pts"):
        return np.loadtxt(path, delimiter="," if "," in path.open().readline() else None, ndmin=2)
    if suffix == ".npz":
        with np.load(path) as f:
            key = next((k for k in ("points", "xyz", "pc", "data") if k in f), None) or next(iter(f.keys()))
            return np.asarray(f[key])
    if path.name.lower().endswith(".gz"):
        import gzip

        with gzip.open(path) as f:
            return np.load(f)
    return np.load(path)


def voxel_surface_points(grid: np.ndarray) -> np.ndarray:
    """Centres ``(N, 3)`` (voxel units, axes of ``grid``) of the occupied voxels with at least one empty
    6-neighbour (outside the grid counts as empty)."""
    occ = np.asarray(grid) > 0.5
    padded = np.pad(occ, 1)
    inner = np.ones_like(occ)
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(occ & ~inner).astype(np.float32) + 0.5


def check_cloud(cloud: PointCloud, source) -> None:
    """One line for what cannot be a training sample: no points, non-finite coordinates, all points equal."""
    if len(cloud) == 0:
        raise DataError(f"{source}: the point cloud is empty")
    if not np.isfinite(cloud.xyz).all():
        raise DataError(f"{source}: {int((~np.isfinite(cloud.xyz)).any(1).sum())} points with NaN / inf coordinates")
    if np.ptp(cloud.xyz, axis=0).max() == 0:
        raise DataError(f"{source}: all {len(cloud)} points coincide (a degenerate cloud)")


def normalize_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Point-MAE's ``pc_norm``: subtract the centroid, divide by the largest distance to it."""
    centred = xyz - xyz.mean(axis=0)
    scale = np.sqrt((centred**2).sum(axis=1)).max()
    return (centred / (scale if scale > 0 else 1.0)).astype(np.float32)


def subsample(xyz: np.ndarray, n: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` points: ``fps`` (farthest point sampling from a random start), ``random`` (without replacement);
    fewer than ``n`` points are padded with random repeats."""
    if len(xyz) < n:
        return np.concatenate([xyz, xyz[rng.integers(0, len(xyz), n - len(xyz))]])
    if method == "random":
        return xyz[rng.choice(len(xyz), n, replace=False)]
    if method != "fps":
        raise DataError(f"sampling={method!r}; choose fps or random")
    import torch
    from domainfm.three_d.grouping import farthest_point_sample

    start = int(rng.integers(len(xyz)))
    rolled = np.roll(xyz, -start, axis=0)
    index = farthest_point_sample(torch.from_numpy(rolled)[None], n)[0].numpy()
    return rolled[index]

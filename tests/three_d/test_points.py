"""Point-cloud readers and preparation on the real files of ../shared/data/three_d (the Stanford bunny PLY, an
airborne LiDAR LAS tile, ModelNet10 voxel grids) and small synthetic files for the formats no sample covers (an OFF
box mesh, arrays, a corrupt PLY: synthetic, said so where made)."""

import gzip

import numpy as np
import pytest
import torch
from domainfm.data.sampling import SeededDataset
from domainfm.errors import DataError
from domainfm.three_d.datasets import PointClouds
from domainfm.three_d.points import normalize_unit_sphere, read_points, subsample, voxel_surface_points

from tests.conftest import SHARED_DATA

THREE_D = SHARED_DATA / "three_d"


def test_real_ply_and_las_files_read_with_their_features():
    import laspy
    import trimesh

    bunny = read_points(THREE_D / "pcu_bunny.ply", surface_points=0)  # the scan's vertices
    mesh = trimesh.load(THREE_D / "pcu_bunny.ply", process=False)  # an independent reader of the same vertices
    assert bunny.xyz.shape == (2885, 3) and np.allclose(bunny.xyz, np.asarray(mesh.vertices), atol=1e-6)
    surface = read_points(THREE_D / "pcu_bunny.ply", surface_points=4096).xyz  # it has faces: sampled on them
    edge = mesh.edges_unique_length.max()  # a point on a face lies within one edge length of its vertices
    nearest = np.sqrt(((surface[:500, None] - np.asarray(mesh.vertices)[None]) ** 2).sum(-1)).min(1)
    assert surface.shape == (4096, 3) and nearest.max() <= edge
    tile = read_points(THREE_D / "laspy_simple.las")
    las = laspy.read(THREE_D / "laspy_simple.las")
    expected = np.stack([las.x, las.y, las.z], 1)
    assert tile.xyz.shape == (1065, 3) and np.allclose(tile.xyz, expected - expected.mean(0), atol=1e-3)
    assert set(tile.features) == {"intensity", "classification", "rgb"}
    assert np.array_equal(tile.features["classification"], np.asarray(las.classification))


def test_laz_reads_through_the_declared_backend(tmp_path):
    """The real LAS tile compressed to LAZ here (laspy writes it with lazrs, the extra's backend): the same points."""
    import laspy

    las = laspy.read(THREE_D / "laspy_simple.las")
    las.write(tmp_path / "tile.laz")
    assert (tmp_path / "tile.laz").stat().st_size < (THREE_D / "laspy_simple.las").stat().st_size
    a, b = read_points(THREE_D / "laspy_simple.las"), read_points(tmp_path / "tile.laz")
    assert np.array_equal(a.xyz, b.xyz) and np.array_equal(a.features["rgb"], b.features["rgb"])


def test_meshes_arrays_and_voxels(tmp_path):
    import trimesh

    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))  # synthetic mesh: a cube of side 2
    box.export(tmp_path / "box.off")
    surface = read_points(tmp_path / "box.off", surface_points=500).xyz
    assert surface.shape == (500, 3) and np.allclose(np.abs(surface).max(1), 1.0, atol=1e-5)  # on the faces
    cloud = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    np.save(tmp_path / "c.npy", cloud)
    np.savetxt(tmp_path / "c.txt", cloud, delimiter=",")
    for name in ("c.npy", "c.txt"):
        read = read_points(tmp_path / name)
        assert np.allclose(read.xyz, cloud[:, :3], atol=1e-5) and read.features["extra"].shape == (50, 3)
    solid = np.zeros((6, 6, 6))
    solid[1:5, 1:5, 1:5] = 1  # a 4^3 block: its shell has 4^3 - 2^3 voxels
    shell = voxel_surface_points(solid)
    assert len(shell) == 64 - 8 and shell.min() == 1.5 and shell.max() == 4.5


def test_bad_files_are_one_line_naming_them(tmp_path):
    (tmp_path / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\n")  # synthetic, truncated
    with pytest.raises(DataError, match=r"broken.ply: unreadable point cloud"):
        read_points(tmp_path / "broken.ply")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(DataError, match=r"empty.npy: the point cloud is empty"):
        read_points(tmp_path / "empty.npy")
    np.save(tmp_path / "same.npy", np.ones((5, 3)))
    with pytest.raises(DataError, match=r"same.npy: all 5 points coincide"):
        read_points(tmp_path / "same.npy")
    with pytest.raises(DataError, match=r"not a point cloud file"):
        read_points(tmp_path / "x.jpg")


def test_preparation_is_point_maes():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(300, 3)).astype(np.float32) * 5 + 3
    unit = normalize_unit_sphere(xyz)
    assert np.allclose(unit.mean(0), 0, atol=1e-5) and np.isclose(np.sqrt((unit**2).sum(1)).max(), 1.0)
    assert subsample(xyz, 64, "random", rng).shape == (64, 3)
    assert subsample(xyz[:10], 64, "fps", rng).shape == (64, 3)  # padded with repeats
    picked = subsample(xyz, 16, "fps", np.random.default_rng(1))
    assert len({tuple(p) for p in picked}) == 16 and all(any((p == xyz).all(1)) for p in picked)


def test_modelnet_voxel_shapes_become_seeded_masked_samples(tmp_path):
    with gzip.open(THREE_D / "modelnet10_vox32_monitor.npy.gz") as f:
        grids = np.load(f)[:20]  # a few of the 466 monitors, as an array of shapes
    np.save(tmp_path / "monitors.npy", grids)
    data = PointClouds(tmp_path / "monitors.npy", n_points=256, mask_group=16, mask_ratio=0.6)
    assert len(data) == 20
    seeded = SeededDataset(data)
    full = [i for i in range(20) if voxel_surface_points(grids[i, 0]).size]
    a, b = seeded[(full[0], 7)], seeded[(full[0], 7)]
    assert torch.equal(a["points"], b["points"]) and torch.equal(a["mask"], b["mask"])  # the seed decides
    assert a["points"].shape == (256, 3) and int(a["mask"].sum()) == 9  # int(0.6 * 16)
    raw = normalize_unit_sphere(voxel_surface_points(grids[full[0], 0]))
    plain = PointClouds(tmp_path / "monitors.npy", n_points=4000, augment=False)  # more than the shape has
    got = SeededDataset(plain)[(full[0], 0)]["points"].numpy()
    assert np.isclose(np.sqrt((got**2).sum(1)).max(), 1.0, atol=1e-3)
    every = normalize_unit_sphere(np.unique(got, axis=0))  # all of the shape's points, padded by repeats
    assert len(every) == len(raw) and np.allclose(np.sort(every, axis=0), np.sort(raw, axis=0), atol=1e-4)
    assert data.preprocess_info() == {"n_points": 256, "normalization": "unit_sphere", "sampling": "random"}
    (tmp_path / "one").mkdir()
    np.save(tmp_path / "one" / "grid.npy", grids[full[0], 0])
    one = PointClouds(tmp_path / "one", n_points=4000, augment=False)  # one bare 32^3 grid: one shape, not 32 sets
    assert len(one) == 1 and len(one.points(0)) == len(raw)

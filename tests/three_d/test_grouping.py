"""FPS, kNN grouping and Chamfer distances (pure torch) against brute-force numpy references written from the
definitions of pointnet2_ops' furthest_point_sample, knn_cuda's KNN and Point-MAE's chamfer_dist."""

import numpy as np
import pytest
import torch
from domainfm.three_d.grouping import chamfer_l1, chamfer_l2, farthest_point_sample, group_points, knn


def _fps_reference(xyz: np.ndarray, k: int) -> list[int]:
    chosen = [0]
    for _ in range(1, k):
        d = [min(((p - xyz[c]) ** 2).sum() for c in chosen) for p in xyz]
        chosen.append(int(np.argmax(d)))
    return chosen


def test_farthest_point_sampling_equals_the_greedy_definition():
    rng = np.random.default_rng(0)
    clouds = rng.normal(size=(3, 60, 3)).astype(np.float32)
    got = farthest_point_sample(torch.from_numpy(clouds), 12).numpy()
    for cloud, index in zip(clouds, got):
        assert index.tolist() == _fps_reference(cloud, 12)
    with pytest.raises(ValueError, match="12 centres from 10 points"):
        farthest_point_sample(torch.zeros(1, 10, 3), 12)


def test_knn_groups_are_the_nearest_points_centred():
    rng = np.random.default_rng(1)
    xyz = rng.uniform(-1, 1, size=(2, 80, 3)).astype(np.float32)
    patches, centers = group_points(torch.from_numpy(xyz), num_group=8, group_size=5)
    assert patches.shape == (2, 8, 5, 3) and centers.shape == (2, 8, 3)
    for b in range(2):
        for g in range(8):
            c = centers[b, g].numpy()
            d = ((xyz[b] - c) ** 2).sum(1)
            expected = xyz[b][np.argsort(d, kind="stable")[:5]] - c  # nearest first; the centre itself first
            assert np.allclose(patches[b, g].numpy(), expected, atol=1e-6)
    assert np.allclose(patches[:, :, 0].numpy(), 0)  # each FPS centre is a point of the cloud: its own neighbour
    idx = knn(torch.from_numpy(xyz[:, :3]), torch.from_numpy(xyz), 4)
    assert idx.shape == (2, 3, 4) and (idx[:, :, 0] == torch.arange(3)).all()


def test_chamfer_distances_equal_brute_force():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 16, 3)), rng.normal(size=(4, 20, 3))
    d1 = np.array([[min(((p - q) ** 2).sum() for q in bb) for p in aa] for aa, bb in zip(a, b)])
    d2 = np.array([[min(((q - p) ** 2).sum() for p in aa) for q in bb] for aa, bb in zip(a, b)])
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert chamfer_l2(ta, tb).item() == pytest.approx(d1.mean() + d2.mean(), rel=1e-9)
    assert chamfer_l1(ta, tb).item() == pytest.approx((np.sqrt(d1).mean() + np.sqrt(d2).mean()) / 2, rel=1e-9)
    assert chamfer_l2(ta, ta).item() == pytest.approx(0.0, abs=1e-12)  # the matmul form rounds, no more
    x = torch.randn(2, 8, 3, requires_grad=True)
    chamfer_l1(x, x.detach() + 0.0).backward()  # zero distances: finite gradients
    assert torch.isfinite(x.grad).all()

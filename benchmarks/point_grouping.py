"""Point grouping and Chamfer speed: domainfm's pure-torch FPS, kNN grouping and Chamfer-L2 against naive
implementations of the same definitions (numpy loops / full sorts, as the brute-force references of the tests),
in one run, reported as ratios; and the share of grouping in a Point-MAE training step (the goal: < 10 %).

    .venv/bin/python benchmarks/point_grouping.py            # ~2 min on 2 CPU cores

torch-geometric's ``fps`` / ``knn`` need torch-cluster, which has no wheel for this torch (FACTS.md); when it imports,
its timings are added. Clouds: real ModelNet10 chairs (voxel surfaces of ../shared/data/three_d), 1,024 points each,
batch 32; Point-MAE at the official size (64 groups x 32, 384 x 12, decoder 4) with batch 32.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from domainfm.three_d.grouping import chamfer_l2, farthest_point_sample, group_points, knn
from domainfm.three_d.points import normalize_unit_sphere, subsample, voxel_surface_points

REPO = Path(__file__).resolve().parents[1]
CHAIRS = REPO.parent / "shared" / "data" / "three_d" / "modelnet10_vox32_chair.npy.gz"


def clouds(batch: int, n: int, min_points: int = 16) -> torch.Tensor:
    """``batch`` real ModelNet10 chairs (voxel surfaces of at least ``min_points``), ``n`` random points each, in the
    unit sphere (seed 0)."""
    with gzip.open(CHAIRS) as f:
        grids = np.load(f)
    rng = np.random.default_rng(0)
    out = []
    for g in grids:
        pts = voxel_surface_points(g[0])
        if len(pts) >= min_points:
            out.append(normalize_unit_sphere(subsample(pts, n, "random", rng)))
        if len(out) == batch:
            break
    return torch.from_numpy(np.stack(out))


def naive_fps(xyz: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(xyz), k), dtype=np.int64)
    for b, cloud in enumerate(xyz):
        nearest = np.full(len(cloud), np.inf)
        last = 0
        for i in range(1, k):
            nearest = np.minimum(nearest, ((cloud - cloud[last]) ** 2).sum(1))
            last = int(nearest.argmax())
            out[b, i] = last
    return out


def naive_knn(query: np.ndarray, points: np.ndarray, k: int) -> np.ndarray:
    d = ((query[:, :, None] - points[:, None]) ** 2).sum(-1)
    return np.argsort(d, axis=-1, kind="stable")[..., :k]


def naive_chamfer(a: np.ndarray, b: np.ndarray) -> float:
    d = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
    return float(d.min(2).mean() + d.min(1).mean())


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = clouds(args.batch, args.points)
    xn = x.numpy()  # float32, as the torch side: the grid points tie often, and ties go to the first index in both
    rows = []
    ours = timed(lambda: farthest_point_sample(x, 64), args.repeats)
    base = timed(lambda: naive_fps(xn, 64), max(1, args.repeats // 2))
    assert (farthest_point_sample(x, 64).numpy() == naive_fps(xn, 64)).mean() > 0.99
    rows.append(("FPS 64 of 1,024", base, ours))
    centres = torch.gather(x, 1, farthest_point_sample(x, 64)[..., None].expand(-1, -1, 3))
    ours = timed(lambda: knn(centres, x, 32), args.repeats)
    base = timed(lambda: naive_knn(centres.numpy(), xn, 32), args.repeats)
    rows.append(("kNN 32 of 1,024 for 64 centres", base, ours))
    patches, _ = group_points(x, 64, 32)
    pred = patches.reshape(-1, 32, 3) + 0.01 * torch.randn(args.batch * 64, 32, 3)
    truth = patches.reshape(-1, 32, 3)
    assert abs(chamfer_l2(pred, truth).item() - naive_chamfer(pred.double().numpy(), truth.double().numpy())) < 1e-5
    ours = timed(lambda: chamfer_l2(pred, truth), args.repeats)
    base = timed(lambda: naive_chamfer(pred.numpy(), truth.numpy()), args.repeats)
    rows.append((f"Chamfer-L2, {args.batch * 64} patch pairs of 32", base, ours))
    try:
        from torch_geometric.nn import fps as pyg_fps  # needs torch-cluster

        flat = x.reshape(-1, 3)
        batch = torch.arange(args.batch).repeat_interleave(args.points)
        pyg = timed(lambda: pyg_fps(flat, batch, ratio=64 / args.points), args.repeats)
        rows.append(("FPS: torch-geometric (torch-cluster)", pyg, rows[0][2]))
    except Exception as err:  # noqa: BLE001 - report why it is absent
        print(f"torch-geometric fps unavailable here: {type(err).__name__}: {str(err).splitlines()[0][:100]}")

    from domainfm.three_d.point_encoder import create_point_transformer
    from domainfm.three_d.point_mae import PointMAE

    torch.manual_seed(0)
    method = PointMAE(create_point_transformer("point_mae"))
    optim = torch.optim.AdamW(method.parameters(), lr=1e-3, weight_decay=0.05)
    mask = method.random_mask(args.batch, torch.Generator().manual_seed(0))

    def step():
        loss = method({"points": x, "mask": mask})["loss"]
        optim.zero_grad()
        loss.backward()
        optim.step()

    step_s = timed(step, 3)
    group_s = timed(lambda: method.encoder.group(x), args.repeats)
    print("| operation | naive (ms) | domainfm (ms) | speed-up |")
    print("|---|---|---|---|")
    for name, b, o in rows:
        print(f"| {name} | {b * 1e3:.1f} | {o * 1e3:.1f} | {b / o:.1f}x |")
    print(f"\nPoint-MAE step (official size, batch {args.batch}, CPU): {step_s * 1e3:.0f} ms; grouping (FPS + kNN) "
          f"{group_s * 1e3:.1f} ms = {100 * group_s / step_s:.1f} % of the step")  # fmt: skip


if __name__ == "__main__":
    main()

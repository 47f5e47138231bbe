"""MADELEINE speed on CPU: Graph-OT solvers against POT at the official sizes, and a training step against the
official code's step, in one run, reported as ratios.

- Graph-OT at the official local-loss size: a batch of 65 slide pairs, 256 tokens of 128 dims. Ours (batched IPOT /
  Gromov-Wasserstein in torch) against POT 0.9.7 per sample: ``ot.emd2`` (the exact transport IPOT converges to),
  ``ot.sinkhorn2`` with 30 iterations (entropic, the same iteration count), ``ot.gromov.gromov_wasserstein2``
  (conditional gradient) and ``ot.gromov.entropic_gromov_wasserstein2`` (5 outer iterations); and, with
  ``--reference``, the official ``GOT`` (its own batched torch code, ``.cuda()`` removed).
- A training step (forward + backward + AdamW) of ``pathology/madeleine`` at its official widths (512-d patch features,
  4 heads, 5 stains, 256 Graph-OT tokens) on a CPU batch (default 8 tissues x 512 patches) against the official
  model + loss step (``--reference``: a scratch folder holding the official code with ``.cuda()`` removed,
  exposing ``official_model`` / ``official_step``; never part of the repository).

    .venv/bin/python benchmarks/madeleine_speed.py [--reference /tmp/madeleine_ref]   # ~3 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch
from domainfm.methods.base import StepContext
from domainfm.pathology.graph_ot import (
    graph_ot,
    gromov_wasserstein,
    thresholded_cosine_cost,
    wasserstein,
)
from domainfm.pathology.madeleine import Madeleine, MadeleineSlideEncoder


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def solvers(batch: int, tokens: int, dim: int, reference) -> list[tuple[str, float, float]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, tokens, dim, generator=g), torch.randn(batch, tokens, dim, generator=g)
    c = thresholded_cosine_cost(x, y)
    cs, ct = thresholded_cosine_cost(x, x), thresholded_cosine_cost(y, y)
    a = np.ones(tokens) / tokens
    cn, csn, ctn = c.double().numpy(), cs.double().numpy(), ct.double().numpy()
    per = range(batch)
    ours_w = timed(lambda: wasserstein(c, 0.5, 30))
    ours_gw = timed(lambda: gromov_wasserstein(cs, ct, 0.1, 5, 20))
    baselines = {
        "W: POT emd2 (exact LP), per sample": (lambda: [ot.emd2(a, a, cn[b]) for b in per], ours_w),
        "W: POT sinkhorn2 (30 it), per sample": (
            lambda: [ot.sinkhorn2(a, a, cn[b], 0.5, numItermax=30, stopThr=0) for b in per],
            ours_w,
        ),
        "GW: POT gromov_wasserstein2 (CG), per sample": (
            lambda: [ot.gromov.gromov_wasserstein2(csn[b], ctn[b], a, a, "square_loss") for b in per],
            ours_gw,
        ),
        "GW: POT entropic_gromov_wasserstein2 (5 it), per sample": (
            lambda: [
                ot.gromov.entropic_gromov_wasserstein2(csn[b], ctn[b], a, a, "square_loss", epsilon=0.1, max_iter=5)
                for b in per
            ],
            ours_gw,
        ),
    }
    rows = [(name, timed(fn, 1), ours) for name, (fn, ours) in baselines.items()]
    if reference is not None:
        ours = timed(lambda: graph_ot(x, y).sum())
        rows.append(("GOT (W + GW): official GOT, batched torch", timed(lambda: reference.official_got(x, y)), ours))
    return rows


def step_times(batch: int, patches: int, reference) -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    stains = ["HE", "HER2", "PGR", "KI67", "ER"]
    feats = torch.randn(batch, len(stains), patches, 512)
    present = torch.ones(batch, len(stains), dtype=torch.bool)
    present[0, 2] = present[1, 4] = False
    enc = MadeleineSlideEncoder(in_dim=512, stains=stains)
    method = Madeleine(enc, temperature=0.001, local_tokens=256).train()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4)
    batch_dict = {"features": feats, "present": present}

    def ours() -> None:
        loss = method(batch_dict, StepContext(0, 1))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_ours = timed(ours)
    rows = []
    if reference is not None:
        model = reference.official_model(in_dim=512, n_stains=len(stains))
        ropt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        t_ref = timed(lambda: reference.official_step(model, feats, present.long(), ropt))
        rows.append((f"MADELEINE step, batch {batch} x {patches} patches, 5 stains: official", t_ref, t_ours))
    else:
        rows.append(
            (f"MADELEINE step, batch {batch} x {patches} patches (no --reference: ours only)", float("nan"), t_ours)
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reference", type=Path, default=None, help="scratch folder with official.py (never committed)")
    p.add_argument("--batch", type=int, default=65)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--step-batch", type=int, default=8)
    p.add_argument("--patches", type=int, default=512)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    reference = None
    if args.reference is not None:
        sys.path.insert(0, str(args.reference))
        import official as reference  # noqa: PLC0415 - the scratch copy of the official code
    rows = solvers(args.batch, args.tokens, 128, reference) + step_times(args.step_batch, args.patches, reference)
    head = f"measured (batch {args.batch}, {args.tokens} tokens of 128 for the solvers)"
    print(f"| {head} | baseline s | ours s | speed-up |")
    print("|---|---|---|---|")
    for name, base, ours in rows:
        print(f"| {name} | {base:.3f} | {ours:.3f} | {base / ours:.1f}x |")
    print(f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()

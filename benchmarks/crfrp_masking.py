"""CRFR-P masking throughput on parsing maps of the real London faces made by ``domainfm faces``'s pipeline:

- ours: ``region_patches`` + ``crfrp_masks`` over the whole batch;
- FSFM's structure (``collate_fn_crfrp``, rewritten here, not imported): per face, each region's membership by
  ``F.max_pool2d`` of its class maps, ``torch.randperm`` picks, region by region;
- the NumPy per-face transcription (``crfrp_reference``) on precomputed memberships, for the masking step alone.

    .venv/bin/python benchmarks/crfrp_masking.py [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from domainfm.face_security.align import FaceAnalyzer, align_face
from domainfm.face_security.crfrp import crfrp_masks, crfrp_reference, region_patches
from domainfm.face_security.parsing import LandmarkParser
from PIL import Image

LONDON = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "face_research_lab_london_256"


def real_maps(n: int) -> torch.Tensor:
    analyzer, parser, maps = FaceAnalyzer(), LandmarkParser(), []
    for path in sorted((LONDON / "neutral").glob("*.jpg"))[:n]:
        frame = np.asarray(Image.open(path).convert("RGB"))
        aligned = align_face(frame, analyzer.faces(frame)[0], analyzer.person(frame))
        maps.append(torch.from_numpy(parser(aligned.image, aligned.landmarks, aligned.person)))
    return torch.stack(maps)


def fsfm_loop(parsing: torch.Tensor, choice: list[int], patch: int = 16, ratio: float = 0.75) -> torch.Tensor:
    """FSFM's per-face rule with its per-face torch operations (membership by max-pooling inside the loop)."""
    groups = [[2, 3], [4, 5], [6], [7, 8, 9], "boundary", [10], [1], [0]]

    def member(m: torch.Tensor, g) -> torch.Tensor:
        if g == "boundary":
            hb = F.max_pool2d(((m == 10) | (m == 0)).float()[None], patch)
            return (hb.bool() & F.max_pool2d((m == 1).float()[None], patch).bool()).flatten()
        out = torch.zeros((m.shape[0] // patch) ** 2)
        for c in g:
            out = torch.maximum(out, F.max_pool2d((m == c).float()[None], patch).flatten())
        return out.bool()

    masks = []
    for m, c in zip(parsing, choice):
        R = member(m, groups[c])
        N, M = R.numel(), int(ratio * R.numel())
        mask, covered = R.clone(), R.clone()
        num = M - int(R.sum())
        if num >= 1:
            rp = num / (N - int(R.sum()))
            for g, grp in enumerate(groups):
                if g == c:
                    continue
                cand = member(m, grp) & ~covered
                idx = cand.nonzero().view(-1)
                mask[idx[torch.randperm(len(idx))[: int(torch.round(cand.sum() * rp))]]] = True
                covered |= cand
            num = M - int(mask.sum())
            pool = (~mask if num > 0 else mask & ~R).nonzero().view(-1)
            mask[pool[torch.randperm(len(pool))[: abs(num)]]] = num > 0
        else:
            pool = R.nonzero().view(-1)
            mask[pool[torch.randperm(len(pool))[:-num]]] = False
        masks.append(mask)
    return torch.stack(masks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    maps = real_maps(32)
    batch = maps.repeat((args.batch + 31) // 32, 1, 1)[: args.batch]
    t = time.perf_counter()
    for _ in range(args.repeats):
        regions = region_patches(batch, 16)
    t_regions = (time.perf_counter() - t) / args.repeats
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    choice = torch.randint(0, 6, (args.batch,), generator=gen)
    arr, ch = regions.numpy(), choice.tolist()
    t = time.perf_counter()
    for _ in range(args.repeats):
        crfrp_masks(regions, 0.75, gen, choice)
    t_vec = (time.perf_counter() - t) / args.repeats
    t = time.perf_counter()
    for _ in range(args.repeats):
        for row, c in zip(arr, ch):
            crfrp_reference(row, c, 0.75, rng)
    t_loop = (time.perf_counter() - t) / args.repeats
    t = time.perf_counter()
    for _ in range(args.repeats):
        fsfm_loop(batch, ch)
    t_fsfm = (time.perf_counter() - t) / args.repeats
    t_ours = t_regions + t_vec
    print(f"batch {args.batch} faces at 224 px / 16 px patches, 1 thread, mean of {args.repeats}")
    print(f"region membership (class bits per patch): {t_regions * 1e3:.1f} ms")
    print(f"vectorised CRFR-P: {t_vec * 1e3:.1f} ms ({args.batch / t_vec:.0f} faces/s)")
    print(f"per-face loop:     {t_loop * 1e3:.1f} ms ({args.batch / t_loop:.0f} faces/s)")
    print(f"ours, membership + masks: {t_ours * 1e3:.1f} ms ({args.batch / t_ours:.0f} faces/s)")
    print(f"FSFM's per-face structure: {t_fsfm * 1e3:.1f} ms ({args.batch / t_fsfm:.0f} faces/s)")
    print(f"ratio (FSFM structure / ours): {t_fsfm / t_ours:.1f}x")
    print(f"masking step alone, NumPy per-face loop / vectorised: {t_loop / t_vec:.1f}x")


if __name__ == "__main__":
    main()

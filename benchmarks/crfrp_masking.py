"""CRFR-P masking throughput: our batch-vectorised masks vs a per-face loop of FSFM's rule (``crfrp_reference``, the
structure of FSFM's ``collate_fn_crfrp``), on parsing maps of the real London faces made by ``domainfm faces``'s
pipeline. Both get the same region membership; the time of ``region_patches`` is reported on its own.

    .venv/bin/python benchmarks/crfrp_masking.py [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
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
    print(f"batch {args.batch} faces at 224 px / 16 px patches, 1 thread, mean of {args.repeats}")
    print(f"region membership (max-pool): {t_regions * 1e3:.1f} ms")
    print(f"vectorised CRFR-P: {t_vec * 1e3:.1f} ms ({args.batch / t_vec:.0f} faces/s)")
    print(f"per-face loop:     {t_loop * 1e3:.1f} ms ({args.batch / t_loop:.0f} faces/s)")
    print(f"ratio (loop / vectorised): {t_loop / t_vec:.1f}x")


if __name__ == "__main__":
    main()

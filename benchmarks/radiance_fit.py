"""Radiance-grid fitting on the real lego views (`domainfm radiance_grid`'s defaults unless given): held-out PSNR,
wall time and the occupied fraction, beside the PSNR of an empty (all-white) grid on the same held-out views.

    .venv/bin/python benchmarks/radiance_fit.py                                  # defaults: 32 -> 64 -> 96, 1,500 steps
    .venv/bin/python benchmarks/radiance_fit.py --resolutions 16,32,48 --iterations 300 --rays 1024 --max-size 64

Writes ``.bench/radiance_fit/<settings>/`` (rgbsigma.npz, fit.json, renders.png) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEGO = REPO.parent / "shared" / "data" / "three_d" / "nerf_synthetic_lego_200px"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolutions", default="32,64,96")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--rays", type=int, default=2048)
    parser.add_argument("--max-size", type=int, default=None)
    args = parser.parse_args()

    import numpy as np
    import torch
    from domainfm.three_d.radiance_grid import FitParams, fit_radiance_grid, psnr, read_posed_images, split_views

    views = read_posed_images(LEGO, max_size=args.max_size)
    params = FitParams(tuple(int(r) for r in args.resolutions.split(",")), args.iterations, args.rays)
    out = REPO / ".bench" / "radiance_fit" / f"r{args.resolutions.replace(',', '-')}_i{args.iterations}_n{args.rays}"
    out = out.with_name(out.name + (f"_px{args.max_size}" if args.max_size else ""))
    t0 = time.perf_counter()
    summary = fit_radiance_grid(views, params, out, progress=False)
    seconds = time.perf_counter() - t0
    _, held_out = split_views(len(views.images), params.holdout)
    white = float(np.mean([psnr(torch.ones_like(views.images[i]), views.images[i]) for i in held_out]))
    print(json.dumps({"view_px": views.hw[0], "resolutions": args.resolutions, "iterations": args.iterations,
                      "rays": args.rays, "seconds": round(seconds, 1), "held_out_psnr": summary["held_out_psnr"],
                      "white_grid_psnr": white, "shape": summary["shape"],
                      "occupied_fraction": summary["occupied_fraction"]}))  # fmt: skip


if __name__ == "__main__":
    main()

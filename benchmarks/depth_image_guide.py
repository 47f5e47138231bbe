"""Writes the depth images of a set of clouds and pretrains a 2D guide for I2P-MAE on them
(:mod:`domainfm.three_d.depth_guide`: MAE on I2P-MAE's own depth projections, where no CLIP weights can be
downloaded).

    .venv/bin/python benchmarks/depth_image_guide.py --clouds .bench/point_ssl_quality/shapes/pretrain \\
        --workdir .bench/depth_guide --size 64 --steps 300

writes ``<workdir>/images/*.png`` (3 per cloud) and the export ``<workdir>/run/export`` to pass as
``method.guide=`` (with ``method.image_size=<size>``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    from domainfm.cli import compose_config
    from domainfm.commands import pretrain
    from domainfm.three_d.depth_guide import depth_guide_overrides, write_depth_images

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clouds", required=True, help="what PointClouds reads: a folder of clouds or an array file")
    parser.add_argument("--workdir", type=Path, default=Path(".bench/depth_guide"))
    parser.add_argument("--n-points", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="depth image size (pass the same as method.image_size)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    start = time.time()
    n = write_depth_images(args.clouds, args.workdir / "images", args.n_points, args.size)
    print(f"{n} depth images in {time.time() - start:.0f} s")
    run = args.workdir / "run"
    overrides = depth_guide_overrides(args.workdir / "images", run, args.size, args.steps, args.batch)
    pretrain.run(compose_config("pretrain", [*overrides, "trainer.tensorboard=false"]))
    print(f"guide: {run / 'export'} ({time.time() - start:.0f} s in all)")


if __name__ == "__main__":
    main()

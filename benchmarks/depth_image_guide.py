"""A 2D guide for I2P-MAE where no pretrained 2D weights can be downloaded: MAE (``core/mae_vit_tiny``) pretrained
on the three depth images (I2P-MAE's own projection, :func:`domainfm.three_d.depth_projection.project_depth`) of
unlabeled point clouds. The paper's guide is CLIP ViT-B/16; this one knows only what the clouds' projections show,
so a benchmark with it measures I2P-MAE's machinery, not CLIP's transfer.

    .venv/bin/python benchmarks/depth_image_guide.py --clouds <array or folder of clouds> --workdir .bench/guide

writes ``<workdir>/images/*.png`` (3 per cloud, grey in RGB) and the export ``<workdir>/run/export`` to pass as
``method.guide=``. The images are normalised with ImageNet's mean / std, as I2P-MAE feeds its guide."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def write_depth_images(clouds: str, out: Path, n_points: int, size: int) -> int:
    """Every cloud's three depth views as 8-bit PNGs; returns the number of images."""
    from domainfm.three_d.datasets import PointClouds
    from domainfm.three_d.depth_projection import project_depth

    data = PointClouds(clouds, n_points=n_points, augment=False)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for i in range(len(data)):
        points = data.prepare(i, np.random.default_rng(i))["points"][None]
        images, _ = project_depth(points, size)
        for v, image in enumerate(images[0]):
            grey = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(grey).convert("RGB").save(out / f"{i:05d}_{v}.png")
            count += 1
    return count


def pretrain_guide(images: Path, run: Path, size: int, steps: int, batch: int) -> Path:
    from domainfm.cli import compose_config
    from domainfm.commands import pretrain

    overrides = [
        "recipe=core/mae_vit_tiny", f"data.root={images}", f"run_dir={run}", f"preprocess.img_size={size}",
        f"preprocess.mean={IMAGENET[0]}", f"preprocess.std={IMAGENET[1]}", "method.norm_pix_loss=false",
        f"trainer.max_steps={steps}", f"data.batch_size={batch}", "trainer.tensorboard=false",
    ]  # fmt: skip
    pretrain.run(compose_config("pretrain", overrides))
    return run / "export"


def main() -> None:
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
    export = pretrain_guide(args.workdir / "images", args.workdir / "run", args.size, args.steps, args.batch)
    print(f"guide: {export} ({time.time() - start:.0f} s in all)")


if __name__ == "__main__":
    main()

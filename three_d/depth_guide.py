"""A 2D guide for I2P-MAE when no pretrained 2D model is at hand (no network, no CLIP weights): MAE
(``core/mae_vit_tiny``) pretrained on the three depth views of unlabeled clouds, I2P-MAE's own projection
(:func:`~domainfm.three_d.depth_projection.project_depth`). The paper's guide is CLIP ViT-B/16; this one knows only
what the clouds' projections show, so it demonstrates I2P-MAE's machinery, not CLIP's transfer. The images are
normalised with ImageNet's mean / std, as I2P-MAE feeds its guide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from domainfm.three_d.depth_projection import IMAGENET_MEAN, IMAGENET_STD, project_depth


def write_depth_images(clouds: str | Path, out: Path, n_points: int = 512, size: int = 64) -> int:
    """Every cloud's three depth views (what :class:`~domainfm.three_d.datasets.PointClouds` reads under ``clouds``,
    no augmentation) as 8-bit grey PNGs in RGB under ``out``; returns the number of images."""
    from domainfm.three_d.datasets import PointClouds
    from PIL import Image

    data = PointClouds(clouds, n_points=n_points, augment=False)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for i in range(len(data)):
        images, _ = project_depth(data.prepare(i, np.random.default_rng(i))["points"][None], size)
        for v, image in enumerate(images[0]):
            grey = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(grey).convert("RGB").save(out / f"{i:05d}_{v}.png")
            count += 1
    return count


def depth_guide_overrides(images: Path, run: Path, size: int, steps: int, batch: int = 64) -> list[str]:
    """``domainfm pretrain`` overrides for the guide: ``core/mae_vit_tiny`` at ``size`` px on ``images``."""
    return [
        "recipe=core/mae_vit_tiny", f"data.root={images}", f"run_dir={run}", f"preprocess.img_size={size}",
        f"preprocess.mean={_listed(IMAGENET_MEAN)}", f"preprocess.std={_listed(IMAGENET_STD)}",
        "method.norm_pix_loss=false", f"trainer.max_steps={steps}", f"trainer.checkpoint_every={steps}",
        f"data.batch_size={batch}",
    ]  # fmt: skip


def _listed(values: tuple[float, ...]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"  # no spaces: the printed command can be pasted into a shell

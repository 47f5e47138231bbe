"""``domainfm extract`` on whole-slide images: one TRIDENT-layout ``.h5`` per slide (``features``, ``coords``).

The ``slides`` kind's extract hook (``pathology/domain.yaml``): the core's extract hands over when ``data.coords``
is set or ``data.kind=slides``."""

from __future__ import annotations

from pathlib import Path

import torch
from domainfm.engine.runtime import resolve_device, resolve_workers
from domainfm.errors import DataError
from domainfm.evaluation.features import load_eval_backbone, pool_tokens
from domainfm.pathology.datasets import coords_files
from domainfm.pathology.features import extract_slide_features
from domainfm.pathology.h5io import read_coords
from omegaconf import DictConfig
from torch import nn


class PooledBackbone(nn.Module):
    """``(B, C, H, W)`` -> pooled token features (``cls``, ``mean`` of patch tokens, or ``both``)."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model, self.pooling = model, pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_tokens(self.model.forward_features(x), self.model.num_prefix_tokens, self.pooling)


def check_mpp(weights_mpp: float | None, tiles_mpp: float, source: str, coords: str) -> None:
    """Weights trained at one resolution see tiles at another: a >10 % difference is an error naming both."""
    if weights_mpp and abs(tiles_mpp - weights_mpp) > 0.1 * weights_mpp:
        raise DataError(
            f"{source} was trained on tiles at {weights_mpp} um/px but {coords} holds tiles at {tiles_mpp} um/px: "
            f"re-tile with tiling.target_mpp={weights_mpp}"
        )


def extract(cfg: DictConfig, source: str) -> Path:
    """Features of every tiled slide in ``data.coords`` (slides in ``data.root``) into ``out/<slide>.h5``."""
    if not cfg.data.get("coords"):
        raise DataError("data.kind=slides needs data.coords=<the patches/ folder of domainfm tile>")
    model, preprocess = load_eval_backbone(source, arch=cfg.get("arch"))
    if preprocess.in_chans != 3:
        raise DataError(f"{source} expects {preprocess.in_chans}-channel images; slides are RGB")
    files = coords_files(cfg.data.coords)
    if not files:
        raise DataError(f"{cfg.data.coords} holds no coordinate .h5 files: run domainfm tile first")
    tiles_mpp = float(read_coords(files[0])[1].get("target_mpp", 0) or 0)
    check_mpp((model.pretrained_cfg.get("domainfm") or {}).get("mpp"), tiles_mpp, source, cfg.data.coords)
    device = resolve_device(cfg.device)
    backbone = PooledBackbone(model, cfg.pooling).to(device).eval()
    summary = extract_slide_features(
        backbone,
        slides=cfg.data.root,
        coords_dir=cfg.data.coords,
        out_dir=Path(cfg.out).expanduser(),
        batch_size=int(cfg.data.batch_size),
        num_workers=resolve_workers(cfg.data.num_workers, device),
        threads=int(cfg.data.get("threads", 1)),
        preprocess=preprocess.view(),
        device=device,
        precision=cfg.precision,
        tag=f"{source} pooling={cfg.pooling}",
        overwrite=bool(cfg.overwrite),
        progress=bool(cfg.progress),
    )
    print(summary.render())
    return Path(summary.out_dir)

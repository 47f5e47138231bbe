"""Slide features: one ``<out_dir>/<slide>.h5`` per slide with ``features`` (N, D) float32 and ``coords`` (N, 2),
plus the tiling attributes (TRIDENT's feature layout), batched over all slides, atomic, resumable."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from domainfm.common import distributed as dist_utils
from domainfm.data.collate import collate_samples
from domainfm.data.shared_batches import SharedBatches, take
from domainfm.engine.runtime import autocast, resolve_precision
from domainfm.errors import DataError
from domainfm.pathology.datasets import SlideSource, SlideTileDataset, coords_files
from domainfm.pathology.h5io import changed_keys, read_coords, read_params, write_h5
from torch import nn
from torch.utils.data import DataLoader

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # UNI's and TRIDENT's patch-encoder normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FeatureSummary:
    out_dir: str
    extracted: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    tiles: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        return (
            f"features       {self.out_dir}: {len(self.extracted)} slides extracted ({self.tiles:,} tiles), "
            f"{len(self.done)} already done, {self.seconds:.1f} s"
        )


def model_fingerprint(module: nn.Module) -> str:
    """SHA-1 of the module's parameters and buffers: outputs of other weights are not mistaken for done."""
    digest = hashlib.sha1()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device)[:, None, None]
    return (images - mean) / std


def _coords_sha1(coords: np.ndarray, attrs: dict) -> str:
    digest = hashlib.sha1(np.ascontiguousarray(coords, dtype=np.int64).tobytes())
    digest.update(f"{attrs.get('patch_size')}/{attrs.get('patch_size_level0')}".encode())
    return digest.hexdigest()


@torch.no_grad()
def extract_slide_features(
    backbone: nn.Module,
    slides: SlideSource,
    coords_dir: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    threads: int = 1,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    tag: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
) -> FeatureSummary:
    """Run ``backbone`` ((B, 3, H, W) normalised tiles -> (B, D)) over every tile of every slide and write
    ``<out_dir>/<slide>.h5`` with ``features`` (N, D) float32, ``coords`` (N, 2) int64 and the tiling attributes.

    Tiles stream from the slides by the coordinates in ``coords_dir`` (``domainfm tile``'s output) as uint8 (a
    quarter of the bytes through the loader workers; ``threads`` read each batch concurrently in every loader
    process), become [0, 1] floats on ``device`` and go through
    ``preprocess`` there, image by image (default: ImageNet mean/std normalisation of the whole batch). Slides
    already done with the same coordinates and weights are skipped; done with others they raise a
    :class:`DataError` unless ``overwrite``. Under DDP (or with ``rank``/``world_size``) each rank takes every
    ``world_size``-th slide.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    rank = dist_utils.rank() if rank is None else rank
    world_size = dist_utils.world_size() if world_size is None else world_size
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    precision = resolve_precision(precision, device)
    fingerprint = model_fingerprint(backbone)
    summary = FeatureSummary(str(out_dir))
    todo, params = [], {}
    for h5 in coords_files(coords_dir)[rank::world_size]:
        coords, attrs = read_coords(h5)
        name = str(attrs.get("name", h5.stem))
        if not len(coords):
            continue
        params[name] = {"coords_sha1": _coords_sha1(coords, attrs), "model_sha1": fingerprint, "tag": tag}
        old = read_params(out_dir / f"{name}.h5")
        if old == params[name]:
            summary.done.append(name)
        elif old is None or overwrite:
            todo.append(name)
        else:
            raise DataError(
                f"{out_dir / f'{name}.h5'} was made with other {' and '.join(changed_keys(old, params[name]))} "
                "(re-tiled slide or other weights); use a new output folder or overwrite=true"
            )
    if todo:
        dataset = SlideTileDataset(coords_dir, slides, names=todo, threads=threads)
        run = (backbone, dataset, preprocess, out_dir, params, batch_size, num_workers, device, precision, progress)
        _run(*run, summary)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run(
    backbone: nn.Module,
    dataset: SlideTileDataset,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    out_dir: Path,
    params: dict,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    precision: str,
    progress: bool,
    summary: FeatureSummary,
) -> None:
    from tqdm.auto import tqdm

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=SharedBatches() if num_workers > 0 else collate_samples,
        pin_memory=device.type == "cuda",
    )
    by_name = {s.name: s for s in dataset.slides}
    was_training = backbone.training
    backbone.eval()
    current, parts = None, []

    def flush() -> None:
        if current is None:
            return
        tiles = by_name[current]
        features = np.concatenate(parts).astype(np.float32)
        attrs = {k: v for k, v in tiles.attrs.items() if k != "domainfm_params"}
        attrs["feature_dim"] = int(features.shape[1])
        write_h5(out_dir / f"{current}.h5", {"features": features, "coords": tiles.coords}, attrs, params[current])
        summary.extracted.append(current)
        summary.tiles += len(features)

    try:
        with tqdm(total=len(dataset), disable=not progress, desc="extract", unit="tile") as bar:
            for batch in map(take, loader):
                images = batch["image"].to(device, non_blocking=True).float().div_(255.0)
                images = _normalize(images) if preprocess is None else torch.stack([preprocess(x) for x in images])
                with autocast(device, precision):
                    out = backbone(images)
                if not isinstance(out, torch.Tensor) or out.ndim != 2:
                    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise DataError(f"the backbone must map (B, 3, H, W) -> (B, D) features; it returned {shape}")
                out = out.float().cpu().numpy()
                names = [m["slide"] for m in batch["meta"]]
                start = 0
                for i in range(1, len(names) + 1):
                    if i == len(names) or names[i] != names[start]:
                        if names[start] != current:
                            flush()
                            current, parts = names[start], []
                        parts.append(out[start:i])
                        start = i
                bar.update(len(names))
                bar.set_postfix(slide=current, refresh=False)
            flush()
    finally:
        backbone.train(was_training)

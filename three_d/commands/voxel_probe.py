"""``domainfm evaluate data.grids=<labeled .npz grids> backbone=<grid encoder>[,...]``: the voxel-level linear
probe of NeRF-MAE encoders (:mod:`domainfm.three_d.voxel_probe`), several backbones side by side (the ``grids``
kind's hook, ``three_d/domain.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from domainfm.backbones.loading import load_backbone
from domainfm.commands.common import output_dir, write_config
from domainfm.commands.labeled import backbone_names, backbone_sources
from domainfm.engine.checkpoint import atomic_write_bytes
from domainfm.errors import DataError
from domainfm.three_d.voxel_probe import read_labeled_grids, split_scenes, voxel_probe
from omegaconf import DictConfig, OmegaConf


def open_grid_encoder(source: str):
    encoder = load_backbone(source).eval()
    size = list(getattr(encoder, "pretrained_cfg", {}).get("input_size") or [])
    if getattr(encoder, "domainfm_architecture", None) != "domainfm_vit3d" or not size or size[0] != 4:
        raise DataError(f"{source} is not a radiance-grid encoder (RGB + alpha 3D ViT); data.grids needs one "
                        "(recipe=three_d/nerf_mae)")  # fmt: skip
    return encoder


def render_table(results: dict[str, dict], notes: list[str]) -> str:
    lines = ["# domainfm evaluate: voxel probe", "", "| backbone | mIoU | mAcc | allAcc | C |", "|---|---|---|---|---|"]
    for name, r in results.items():
        cell = {m: f"{r['metrics'][m]:.3f} [{r['ci'][m][0]:.3f}, {r['ci'][m][1]:.3f}]" for m in r["metrics"]}
        lines.append(f"| {name} | {cell['miou']} | {cell['macc']} | {cell['allacc']} | {r['C']:g} |")
    return "\n".join([*lines, "", *notes])


def write_splits(cfg: DictConfig, scenes, splits, out: Path) -> None:
    """``splits.csv``: each scene (relative to ``data.grids``) and its split."""
    rows = [f"{Path(s.path).relative_to(Path(cfg.data.grids))},{sp}\n" for s, sp in zip(scenes, splits)]
    atomic_write_bytes(("scene,split\n" + "".join(rows)).encode(), out / "splits.csv")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out)
    scenes = read_labeled_grids(cfg.data.grids)
    splits = split_scenes(len(scenes), int(cfg.split.seed), float(cfg.voxel_probe.val), float(cfg.voxel_probe.test))
    write_splits(cfg, scenes, splits, out)
    sources = backbone_sources(cfg)
    names = backbone_names(sources)
    results = {}
    for source in sources:
        r = voxel_probe(open_grid_encoder(source), scenes, splits, int(cfg.voxel_probe.voxels_per_scene),
                        cs=tuple(cfg.linear.Cs), seed=int(cfg.seed))  # fmt: skip
        results[names[source]] = {**r, "source": source}
    counts = {s: int((splits == s).sum()) for s in ("train", "val", "test")}
    notes = [
        f"Data: data.grids={cfg.data.grids} ({len(scenes)} scenes, split sizes {counts}); scored on the "
        f"{next(iter(results.values()))['test_voxels']} labeled test voxels; 95 % CIs resample test scenes."
    ]
    summary = render_table(results, notes)
    info = {"results": results, "config": OmegaConf.to_container(cfg, resolve=True)}
    atomic_write_bytes(json.dumps(info, indent=2, default=_plain).encode(), out / "results.json")
    atomic_write_bytes(summary.encode(), out / "summary.md")
    print(summary, flush=True)
    print(f"results: {out / 'results.json'}, {out / 'summary.md'}, splits: {out / 'splits.csv'}")
    return results


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)

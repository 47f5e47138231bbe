"""``domainfm export run_dir=<run>``: rebuild the run's method from its config, load a checkpoint, export."""

from __future__ import annotations

from pathlib import Path

import torch
from domainfm.commands.common import load_run_config
from domainfm.engine.checkpoint import CheckpointManager
from domainfm.engine.export import export_backbone
from domainfm.errors import DataError
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def run(cfg: DictConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise DataError(f"{config_path} not found: run_dir must be a folder made by 'domainfm pretrain'")
    run_cfg = load_run_config(config_path)
    if cfg.checkpoint:
        state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
    else:
        loaded = CheckpointManager(run_dir / "checkpoints").load_latest()
        if loaded is None:
            raise DataError(f"{run_dir / 'checkpoints'} holds no readable checkpoint")
        state = loaded[0]
    method = instantiate(run_cfg.method)
    method.load_state_dict(state["model"])
    out = Path(cfg.out) if cfg.out else run_dir / "export"
    preprocess = OmegaConf.to_container(run_cfg.preprocess, resolve=True)
    settings = OmegaConf.to_container(run_cfg, resolve=True)
    export_backbone(
        method.backbone,
        out,
        preprocess,
        tag=f"domainfm-{run_cfg.name}-step{state['step']}",
        extra_files=lambda folder: method.export_files(folder, settings),
    )
    print(f"exported step {state['step']} of {run_dir} to {out}")
    return out

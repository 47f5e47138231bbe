"""Shared pieces of the run commands: run folder, resolved config, output location."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("domainfm")
_VOLATILE = {"trainer.max_steps", "trainer.progress", "trainer.log_every", "data.num_workers"}


def output_dir(cfg: DictConfig) -> Path:
    """The run folder: ``run_dir`` (or Hydra's per-job folder in multirun)."""
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not running under Hydra (tests calling commands directly)
        return Path(cfg.run_dir)


def write_config(cfg: DictConfig, run_dir: Path) -> None:
    """Save the resolved config; warn about keys that differ from an earlier run in the same folder."""
    path = run_dir / "config.yaml"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if path.exists():
        old = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        changed = sorted(k for k in _diff(old, resolved) if k not in _VOLATILE)
        if changed:
            log.warning(
                "run_dir %s was made with a different config (changed: %s); resuming anyway",
                run_dir,
                ", ".join(changed[:10]),
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(resolved), path)


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]

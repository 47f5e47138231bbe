"""Shared pieces of the run commands: run folder, resolved config, output location."""

from __future__ import annotations

import logging
from pathlib import Path

from domainfm.engine.checkpoint import CheckpointManager
from domainfm.errors import ConfigError
from domainfm.plugins import check_targets
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("domainfm")
_STRUCTURAL = ("name", "method", "backbone", "preprocess")
_VOLATILE = {"trainer.max_steps", "trainer.progress", "trainer.log_every", "trainer.resume", "data.num_workers"}


def output_dir(cfg: DictConfig) -> Path:
    """The run folder: ``run_dir`` (or Hydra's per-job folder in multirun)."""
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not running under Hydra (tests calling commands directly)
        return Path(cfg.run_dir)


def apply_data_limits(cfg: DictConfig) -> None:
    """``data.max_image_pixels``: Pillow's decompression-bomb limit for this process (and its loader workers)."""
    limit = OmegaConf.select(cfg, "data.max_image_pixels", default=None)
    if limit is not None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = int(limit)


def load_run_config(path: Path) -> DictConfig:
    """A run folder's ``config.yaml``, checked before anything in it is instantiated: every ``_target_`` must lie
    in domainfm, timm, torch or an installed domain (``domainfm.plugins.check_targets``)."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - yaml and OmegaConf errors alike
        raise ConfigError(f"{path} is not a readable config ({' '.join(str(err).split())[:200]})") from err
    check_targets(OmegaConf.to_container(cfg, resolve=False), str(path))
    return cfg


def job_output(out: str | Path) -> Path:
    """``out``, or under ``-m`` the job's own folder (the command's ``hydra.sweep`` puts it in ``<out>/<job>``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN:
            return Path(hydra.runtime.output_dir)
    except ValueError:  # not under Hydra
        pass
    return Path(out)


def write_config(cfg: DictConfig, run_dir: Path) -> None:
    """Save the resolved config (with the run folder actually used). Over an earlier run's config: keys that change
    what the checkpoints hold (``name``, ``method``, ``backbone``, ``preprocess``) are refused while that run's
    checkpoints are there — nothing is written — unless ``trainer.resume=fresh`` sets them aside (with the old
    config) first; other changes are a warning."""
    path = run_dir / "config.yaml"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if "run_dir" in resolved:
        resolved["run_dir"] = str(run_dir)
    if path.exists():
        old = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        changed = sorted(k for k in _diff(old, resolved) if k not in _VOLATILE)
        structural = [k for k in changed if k.split(".", 1)[0] in _STRUCTURAL]
        checkpoints = CheckpointManager(run_dir / "checkpoints")
        if structural and checkpoints.list():
            if OmegaConf.select(cfg, "trainer.resume", default="auto") != "fresh":
                raise ConfigError(
                    f"{run_dir} holds checkpoints of another config (changed: {', '.join(structural[:6])}): give "
                    "a new run_dir, or trainer.resume=fresh to set them aside and start again"
                )
            dest = checkpoints.set_aside("config-changed")
            path.rename(dest / "config.yaml")
            log.warning("config changed (%s): earlier checkpoints and config moved to %s", structural[0], dest)
        elif changed:
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

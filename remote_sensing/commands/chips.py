"""``domainfm chips data.root=<scenes> out=<dir>``: an index of chips over multiband scenes, with cloud/nodata
masking and per-band statistics (declared in ``remote_sensing/domain.yaml``; config ``configs/chips.yaml``)."""

from __future__ import annotations

import json

from domainfm.commands.common import job_output
from domainfm.engine.checkpoint import atomic_write_bytes
from domainfm.errors import ConfigError
from domainfm.remote_sensing.chips import ChipParams, chip_scenes
from domainfm.remote_sensing.stats import archive_statistics
from omegaconf import DictConfig, OmegaConf


def run(cfg: DictConfig) -> dict:
    for key, hint in (("data.root", "a folder of scenes"), ("out", "the output folder")):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key}=<{hint}> is required: domainfm chips data.root=<scenes> out=<folder>")
    out = job_output(cfg.out)
    summary = chip_scenes(
        cfg.data.root,
        out,
        ChipParams(**OmegaConf.to_container(cfg.chips, resolve=True)),
        workers=cfg.workers,
        overwrite=cfg.overwrite,
        strict=cfg.data.strict,
        progress=cfg.progress,
    )
    print(summary.render(), flush=True)
    result = summary.to_dict()
    if cfg.stats.max_chips and summary.chips:
        stats = archive_statistics(out, int(cfg.stats.max_chips), int(cfg.stats.seed), bool(cfg.progress))
        atomic_write_bytes(json.dumps(stats, indent=2).encode(), out / "band_stats.json")
        for g in stats["groups"]:
            print(f"band stats     {len(g['names'])} bands over {g['chips']} chips of {len(g['scenes'])} scene(s)")
        print(f"               -> {out / 'band_stats.json'}", flush=True)
        result["band_stats"] = str(out / "band_stats.json")
    return result

"""``domainfm tile data.root=<slides> out=<dir>``: tissue detection and tile coordinates for a folder of slides
(declared in ``pathology/domain.yaml``; config ``pathology/configs/tile.yaml``)."""

from __future__ import annotations

from domainfm.commands.common import job_output
from domainfm.errors import ConfigError
from domainfm.pathology.tiling import TilingParams, TissueParams, tile_slides
from omegaconf import DictConfig, OmegaConf


def run(cfg: DictConfig) -> dict:
    for key, hint in (("data.root", "a folder of slides"), ("out", "the output folder")):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key}=<{hint}> is required: domainfm tile data.root=<slides> out=<folder>")
    tissue = OmegaConf.to_container(cfg.tissue, resolve=True)
    geojson_dir = tissue.pop("geojson_dir", None)
    data = cfg.data
    summary = tile_slides(
        data.root,
        job_output(cfg.out),
        tiling=TilingParams(**OmegaConf.to_container(cfg.tiling, resolve=True)),
        tissue=TissueParams(**tissue),
        mpp=data.mpp,
        csv_path=data.csv,
        geojson_dir=geojson_dir,
        extensions=tuple(data.extensions) if data.extensions else None,
        workers=cfg.workers,
        overwrite=cfg.overwrite,
        strict=data.strict,
        progress=cfg.progress,
    )
    print(summary.render(), flush=True)
    return summary.to_dict()

"""``domainfm index data.root=<dump> out=<dir>``: a manifest of the DICOM series (and NIfTI / NRRD volumes) of a
dump, optionally a decoded cache at a target spacing (declared in ``medical/domain.yaml``; config
``configs/index.yaml``; see :mod:`domainfm.medical.index`)."""

from __future__ import annotations

from domainfm.commands.common import job_output
from domainfm.errors import ConfigError
from domainfm.medical.index import IndexParams, index_archive
from omegaconf import DictConfig, OmegaConf


def run(cfg: DictConfig) -> dict:
    for key, hint in (("data.root", "a DICOM dump folder, a DICOMDIR or a volume"), ("out", "the output folder")):
        node, _, leaf = key.rpartition(".")
        if OmegaConf.is_missing(OmegaConf.select(cfg, node) if node else cfg, leaf):
            raise ConfigError(f"{key}=<{hint}> is required: domainfm index data.root=<dump> out=<folder>")
    params = IndexParams(**OmegaConf.to_container(cfg.index, resolve=True))
    if params.spacing is not None and (len(params.spacing) != 3 or min(params.spacing) <= 0):
        raise ConfigError(f"index.spacing={params.spacing}: three voxel sizes in mm, e.g. index.spacing=[1,1,1]")
    if params.format not in ("nii", "nii.gz"):
        raise ConfigError(f"index.format={params.format!r}; choose nii.gz (compressed) or nii (read lazily)")
    summary = index_archive(
        cfg.data.root, job_output(cfg.out), params, workers=cfg.workers, progress=cfg.progress, overwrite=cfg.overwrite
    )
    print(summary.render(), flush=True)
    return summary.to_dict()

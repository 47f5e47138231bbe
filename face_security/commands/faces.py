"""``domainfm faces data.root=<videos | images> out=<dir>``: aligned 224 px faces and LaPa parsing maps, ready for
FSFM pretraining (declared in ``face_security/domain.yaml``; config ``face_security/configs/faces.yaml``)."""

from __future__ import annotations

import csv
from pathlib import Path

import hydra
import numpy as np
from domainfm.commands.common import job_output
from domainfm.errors import ConfigError
from domainfm.face_security.faces import FaceParams, extract_faces
from domainfm.face_security.parsing import overlay
from omegaconf import DictConfig, OmegaConf
from PIL import Image


def overlay_sheet(out: Path, n: int = 8) -> Path | None:
    """``out/overlays.png``: the first ``n`` faces of ``faces.csv`` over their parsing maps."""
    with (out / "faces.csv").open() as f:
        rows = list(csv.DictReader(f))[:n]
    if not rows:
        return None
    tiles = []
    for row in rows:
        image = np.asarray(Image.open(out / row["path"]).convert("RGB"))
        parsing = np.asarray(Image.open(out / row["parsing"]))
        tiles.append(np.concatenate([image, overlay(image, parsing)], axis=0))
    path = out / "overlays.png"
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
    return path


def run(cfg: DictConfig) -> dict:
    for node, key, hint in (
        (cfg.data, "data.root", "a folder of face videos or images"),
        (cfg, "out", "the output folder"),
    ):
        if OmegaConf.is_missing(node, key.split(".")[-1]):
            raise ConfigError(f"{key}=<{hint}> is required: domainfm faces data.root=<videos|images> out=<folder>")
    parser = hydra.utils.instantiate(cfg.parser) if cfg.parser is not None else None
    params = FaceParams(**OmegaConf.to_container(cfg.face, resolve=True), parser=parser)
    out = job_output(cfg.out)
    summary = extract_faces(cfg.data.root, out, params, workers=cfg.workers, chunk=cfg.chunk, progress=cfg.progress)
    if cfg.overlays:
        overlay_sheet(out, cfg.overlays)
    print(summary.render(), flush=True)
    return summary.to_dict()

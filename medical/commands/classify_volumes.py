"""``domainfm evaluate data.volumes=<csv>`` and ``domainfm finetune data.volumes=<csv>``: volume-level
classification with 3D backbones through the core's protocols (the ``volumes`` kind's hooks,
``medical/domain.yaml``). The CSV has ``path,label[,split][,group]`` columns; a path is a NIfTI / NRRD file or a
DICOM series folder, relative to ``data.root`` or else the CSV's folder. Splits are the core's (class-stratified,
a ``group`` = patient in one split), written to ``splits.csv``.

Each backbone reads the volumes as its export records (intensity, modality, spacing, mean / std; else
``data.intensity`` / ``data.modality`` / ``data.spacing``), the whole volume resized to its input size
(:mod:`domainfm.medical.labeled_volumes`). ``evaluate`` runs the frozen protocols (kNN, linear, few-shot) on those
features; ``finetune`` the core recipe (layer-wise lr decay, best-on-val checkpoint, test once) with 3D training
views (``finetune.crop_scale``, ``finetune.hflip`` left-right, ``finetune.vflip`` anterior-posterior)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from domainfm.commands.common import output_dir, write_config
from domainfm.commands.evaluate import evaluate_backbones
from domainfm.commands.finetune import FinetuneInput, finetune_backbones
from domainfm.commands.labeled import as_list
from domainfm.engine.runlock import RunLock
from domainfm.errors import ConfigError
from domainfm.evaluation.datasets import LabeledSet, check_groups, load_labeled, save_splits, with_splits
from domainfm.evaluation.features import Preprocess
from domainfm.evaluation.protocols import check_protocols
from domainfm.medical.labeled_volumes import LabeledVolumes, VolumeView, check_3d, open_for_config
from omegaconf import DictConfig
from torch import nn

log = logging.getLogger("domainfm")


def labeled_volumes(cfg: DictConfig) -> LabeledSet:
    """``cfg.data.volumes`` as a :class:`LabeledSet` with the core's splits."""
    data = load_labeled(cfg.data.get("root"), cfg.data.volumes, folders=True)
    data = dataclasses.replace(data, source=f"data.volumes={cfg.data.volumes}")
    data = with_splits(data, val=float(cfg.split.val), test=float(cfg.split.test), seed=int(cfg.split.seed))
    check_groups(data)
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    log.info("%s: %d volumes, classes %s, splits %s", data.source, len(data), data.classes, counts)
    return data


def open_volumes(cfg: DictConfig, source: str) -> tuple[nn.Module, Preprocess, dict]:
    """The 3D backbone of ``source`` (eval mode), its preprocessing and how it reads volumes."""
    if cfg.get("arch"):
        raise ConfigError("arch= names a timm architecture; data.volumes needs a domainfm 3D export or run")
    model, reading = open_for_config(cfg, source)
    preprocess = Preprocess.of(model)
    check_3d(preprocess, source)
    return model.eval(), preprocess, reading


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    protocols = check_protocols(as_list(cfg.protocol))
    write_config(cfg, out)
    data = labeled_volumes(cfg)
    save_splits(data, out / "splits.csv")

    def open_data(source: str):
        model, preprocess, reading = open_volumes(cfg, source)
        return model, preprocess, LabeledVolumes(data.paths, data.labels, data.ids, reading, preprocess.size)

    return evaluate_backbones(cfg, out, protocols, data, open_data, what="volumes")


def finetune(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    with RunLock(out, "domainfm finetune"):
        write_config(cfg, out)
        data = labeled_volumes(cfg)
        save_splits(data, out / "splits.csv")
        ft = cfg.finetune

        def volume_input(source: str) -> FinetuneInput:
            model, preprocess, reading = open_volumes(cfg, source)
            view = VolumeView(preprocess.size, tuple(ft.crop_scale), float(ft.hflip), float(ft.vflip))

            def make_set(subset: LabeledSet, view_of_split) -> LabeledVolumes:
                train = isinstance(view_of_split, VolumeView)  # the core passes the training view or None
                return LabeledVolumes(
                    subset.paths, subset.labels, subset.ids, reading, preprocess.size,
                    view=view_of_split if train else None, cache=train,
                )  # fmt: skip

            return model.train(), preprocess, make_set, view

        return finetune_backbones(cfg, out, data, volume_input, what="volumes")

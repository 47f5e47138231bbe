"""``domainfm evaluate data.chips=<chips> backbone=<...>``: frozen-backbone protocols on chips labeled by their
majority Sentinel-2 SCL class (the ``chips`` kind's evaluate hook, ``remote_sensing/domain.yaml``).

Each backbone reads the chips with the bands and the normalisation its weights were trained with (from the
export; ``data.normalization`` forces another, for comparisons). Splits are spatial: chips of one
``data.block_px`` block of a scene stay in one split, so overlapping or neighbouring chips never leak."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from domainfm.commands.common import output_dir, write_config
from domainfm.commands.evaluate import evaluate_backbones
from domainfm.commands.labeled import as_list
from domainfm.data.transforms import Normalize
from domainfm.errors import DataError
from domainfm.evaluation.datasets import LabeledSet, check_groups, save_splits, with_splits
from domainfm.evaluation.features import Preprocess, load_eval_backbone
from domainfm.evaluation.protocols import check_protocols
from domainfm.remote_sensing.bands import SCL_CLASSES
from domainfm.remote_sensing.datasets import ChipDataset
from domainfm.remote_sensing.model import normalization_of
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")


class LabeledChips(Dataset):
    """The chips of ``rows`` of a :class:`ChipDataset`, labeled with ``labels``, normalised by ``view``."""

    def __init__(self, chips: ChipDataset, rows: np.ndarray, labels: np.ndarray, ids: list[str], view=None):
        self.chips, self.rows, self.labels, self.ids, self.view = chips, rows, labels, ids, view
        norm = chips.normalization
        self.fingerprint_extra = {"bands": chips.bands, "normalization": norm.to_dict() if norm else None}

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, i: int) -> str:
        return self.chips.describe(int(self.rows[i]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.chips[int(self.rows[i])]["image"]
        return {
            "image": self.view(image) if self.view else image,
            "label": int(self.labels[i]),
            "meta": {"id": self.ids[i]},
        }


def labeled_chips(
    chips_dir: str | Path, min_valid: float | None = None, min_class: int = 10, block_px: int = 256,
    split: dict | None = None,
) -> tuple[LabeledSet, np.ndarray]:  # fmt: skip
    """Chips with an SCL class as a :class:`LabeledSet` (with spatial-block groups and splits) and their row
    numbers in ``ChipDataset(chips_dir, labels=True, min_valid=min_valid)``."""
    chips = ChipDataset(chips_dir, labels=True, min_valid=min_valid)
    scl = chips.classes()
    present, counts = np.unique(scl, return_counts=True)
    kept = [int(c) for c, n in zip(present, counts) if n >= min_class]
    left = {SCL_CLASSES.get(int(c), str(c)): int(n) for c, n in zip(present, counts) if n < min_class}
    if left:
        log.info("classes with fewer than %d chips left out (data.min_class): %s", min_class, left)
    if len(kept) < 2:
        raise DataError(
            f"data.chips={chips_dir}: {len(kept)} SCL class(es) with at least {min_class} chips "
            f"({dict(zip(map(int, present), map(int, counts)))}); a labeled set needs two (lower data.min_class, "
            "or chip with chips.invalid_classes=[0] chips.max_invalid=1 to keep cloudy chips as classes)"
        )
    rows = np.flatnonzero(np.isin(scl, kept))
    classes = [SCL_CLASSES.get(c, str(c)) for c in kept]
    labels = np.searchsorted(np.asarray(kept), scl[rows])
    meta = [chips.rows[i] for i in rows]
    ids = [f"{s}:{r}:{c}" for s, r, c, *_ in meta]
    groups = np.array([f"{s}:{r // block_px}:{c // block_px}" for s, r, c, *_ in meta], dtype=object)
    data = LabeledSet([Path(i) for i in ids], ids, labels, classes, groups, None, source=f"data.chips={chips_dir}")
    split = split or {}
    data = with_splits(data, float(split.get("val", 0.15)), float(split.get("test", 0.2)), int(split.get("seed", 0)))
    check_groups(data)
    return data, rows


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    protocols = check_protocols(as_list(cfg.protocol))
    write_config(cfg, out)
    data, rows = labeled_chips_of(cfg)
    save_splits(data, out / "splits.csv")
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    log.info("%s: %d chips, classes %s, spatial splits %s", data.source, len(data), data.classes, counts)

    def open_data(source: str):
        model, preprocess, chips = open_chips(cfg, source)
        view = Normalize(preprocess.mean, preprocess.std)
        return model, preprocess, LabeledChips(chips, rows, data.labels, data.ids, view)

    return evaluate_backbones(cfg, out, protocols, data, open_data, what="chips")


def open_chips(cfg: DictConfig, source: str) -> tuple[nn.Module, Preprocess, ChipDataset]:
    """The backbone of ``source``, its preprocessing and ``cfg.data.chips`` read with the bands and the
    normalisation its weights were trained with (``data.normalization`` forces another, with a warning)."""
    model, preprocess = load_eval_backbone(source, arch=cfg.get("arch"))
    forced = cfg.data.get("normalization")
    if forced:
        log.warning("%s: chips normalised with %s, not the weights' own (data.normalization)", source, forced)
    bands = (model.pretrained_cfg.get("domainfm") or {}).get("bands")
    chips = ChipDataset(
        cfg.data.chips,
        bands=bands,
        labels=True,
        min_valid=cfg.data.get("min_valid"),
        normalization=forced or normalization_of(model, source),
        out_size=preprocess.size[0],
    )
    if chips.in_chans != preprocess.in_chans:
        raise DataError(f"{source} takes {preprocess.in_chans} channels; the chips give {chips.in_chans}")
    return model, preprocess, chips


def labeled_chips_of(cfg: DictConfig) -> tuple[LabeledSet, np.ndarray]:
    """:func:`labeled_chips` with the command's ``data`` and ``split`` settings."""
    return labeled_chips(
        cfg.data.chips, cfg.data.get("min_valid"), int(cfg.data.min_class), int(cfg.data.block_px), dict(cfg.split)
    )

"""Slide-level evaluation and extraction on bags of patch features (the ``slide_bags`` kind, ``data.bags=<folder
of per-slide .h5>``; ``pathology/domain.yaml``).

``domainfm extract backbone=<slide encoder export> data.bags=<features folder> out=<slides.h5>``: one row per slide
(the ``.h5`` files of the folder, or the slides of ``data.csv``): the slide encoder's H&E embedding of all its
patches (``pooling=cls``; ``mean`` = the same projection under uniform attention), in the core's features layout
(``features``, ``ids`` = slide ids, ``labels``), resumable.

``domainfm evaluate backbone=<export>[,mean] data.bags=<folder> data.csv=<slide_id,label[,split][,group]>
protocol=[fewshot_lr,retrieval_map,linear,knn]``: frozen slide embeddings through the core's protocols (MADELEINE's
few-shot logistic regression at k = 1, 10, 25 slides per class, retrieval mAP@k, ...), several backbones side by
side; ``backbone=mean`` is the mean of each slide's patch features (the usual baseline). Each slide's file is
``<data.bags>/<slide_id>.h5`` unless the CSV has a ``path`` column (relative to ``data.bags``); ``group`` (the
patient) keeps a patient's slides in one split. Unreadable files are skipped, counted and listed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.commands.common import output_dir, write_config
from domainfm.commands.evaluate import evaluate_backbones
from domainfm.commands.labeled import as_list, extract, split_labeled
from domainfm.errors import DataError
from domainfm.evaluation.abmil import H5Bag, read_bag_files
from domainfm.evaluation.datasets import SPLITS, LabeledSet, encode_labels, read_table
from domainfm.evaluation.features import Preprocess
from domainfm.evaluation.protocols import check_protocols
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")

MEAN = "mean"  # the pseudo-backbone: mean of the patch features


class MeanOfPatches(nn.Module):
    """``(B, N, D)`` -> ``[mean | patches]``: the mean-pooled patch features as a backbone (no weights)."""

    num_prefix_tokens = 1

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = int(dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(1, keepdim=True), x], dim=1)


class SlideBags(Dataset):
    """Items ``{"image": (N, D) float32, "label"}`` read from each slide's ``.h5`` when used."""

    def __init__(self, bags: list[H5Bag], ids: list[str], labels: np.ndarray | None = None):
        self.bags, self.ids = bags, list(ids)
        self.labels = None if labels is None else np.asarray(labels)

    def __len__(self) -> int:
        return len(self.bags)

    def describe(self, i: int) -> str:
        return str(self.bags[i].path)

    def __getitem__(self, i: int) -> dict[str, Any]:
        label = -1 if self.labels is None else int(self.labels[i])
        return {"image": torch.from_numpy(np.asarray(self.bags[i])), "label": label}


def _readable(paths: list[Path], source: str) -> tuple[list[H5Bag], list[int]]:
    bags, skipped = read_bag_files(paths)
    keep = [i for i, b in enumerate(bags) if b is not None]
    if skipped:
        log.warning("%d of %d slide files skipped: %s", len(skipped), len(paths), "; ".join(skipped[:10]))
    if not keep:
        raise DataError(f"{source}: none of the {len(paths)} slide files is readable (first: {skipped[0]})")
    return [bags[i] for i in keep], keep


def labeled_slides(cfg: DictConfig, out: Path) -> tuple[LabeledSet, list[H5Bag]]:
    """The slides of ``data.csv`` found in ``data.bags``, with splits (written to ``splits.csv``)."""
    if not cfg.data.get("csv"):
        raise DataError("data.bags needs data.csv=<slide_id,label[,split][,group] csv> to evaluate")
    csv_path, root = Path(cfg.data.csv).expanduser(), Path(cfg.data.bags).expanduser()
    columns, rows = read_table(csv_path, ("slide_id", "label"), "needs columns slide_id,label[,split][,group][,path]")
    paths = [root / (r["path"] if r.get("path") else f"{r['slide_id']}.h5") for r in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{csv_path}: {len(missing)} of {len(rows)} slides have no features in data.bags={root} (first: "
            f"{missing[0].name}); run domainfm extract on them, or add a path column"
        )
    bags, keep = _readable(paths, f"data.bags={root}")
    rows = [rows[i] for i in keep]
    labels, classes = encode_labels([r["label"] for r in rows])
    splits = None
    if "split" in columns:
        splits = np.array([r["split"].lower() for r in rows], dtype=object)
        bad = [r["split"] for r in rows if r["split"].lower() not in SPLITS]
        if bad:
            raise DataError(f"{csv_path}: split={bad[0]!r}; use train, val or test")
    groups = np.array([r["group"] for r in rows], dtype=object) if "group" in columns else None
    ids = [r["slide_id"] for r in rows]
    data = LabeledSet([b.path for b in bags], ids, labels, classes, groups, splits, source=f"data.csv={csv_path}")
    return split_labeled(data, cfg, out, "slides"), bags


def open_slide_encoder(source: str, dim: int) -> tuple[nn.Module, Preprocess]:
    """A slide encoder export (its ``input_size`` is ``[0, patch feature dim]``) or ``mean``; checked against the
    bags' feature width."""
    if source == MEAN:
        return MeanOfPatches(dim).eval(), Preprocess(dim, (0,), [0.0], [1.0])
    model = load_backbone(source).eval()
    size = list(model.pretrained_cfg.get("input_size") or [])
    if len(size) != 2 or size[0] != 0:
        raise DataError(
            f"{source} is not a slide encoder (input {size}); data.bags needs one (recipe=pathology/madeleine)"
        )
    if int(size[1]) != dim:
        raise DataError(
            f"{source} takes {size[1]}-d patch features; data.bags holds {dim}-d: extract with its patch encoder"
        )
    return model, Preprocess(dim, (0,), [0.0], [1.0])


def _one_slide_batches(cfg: DictConfig) -> None:
    if int(cfg.data.batch_size) != 1:
        log.info("data.bags: one slide per batch (slides have different patch counts)")
    cfg.data.batch_size = 1


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    protocols = check_protocols(as_list(cfg.protocol))
    write_config(cfg, out)
    _one_slide_batches(cfg)
    data, bags = labeled_slides(cfg, out)
    dim = bags[0].shape[1]

    def open_data(source: str):
        model, preprocess = open_slide_encoder(source, dim)
        return model, preprocess, SlideBags(bags, data.ids, data.labels)

    return evaluate_backbones(cfg, out, protocols, data, open_data, what="slides")


def extract_slides(cfg: DictConfig, source: str) -> Path:
    """Slide embeddings of every slide in ``data.bags`` (or of ``data.csv``'s slides) into ``out`` (one .h5)."""
    root = Path(cfg.data.bags).expanduser()
    if cfg.data.get("csv"):
        _, rows = read_table(Path(cfg.data.csv).expanduser(), ("slide_id",), "needs a slide_id column")
        ids = [r["slide_id"] for r in rows]
        paths = [root / (r["path"] if r.get("path") else f"{r['slide_id']}.h5") for r in rows]
    else:
        paths = sorted(root.glob("*.h5"))
        ids = [p.stem for p in paths]
    if not paths:
        raise DataError(f"data.bags={root} holds no .h5 files: run domainfm extract on the tiled slides first")
    bags, keep = _readable(paths, f"data.bags={root}")
    ids = [ids[i] for i in keep]
    model, preprocess = open_slide_encoder(source, bags[0].shape[1])
    _one_slide_batches(cfg)
    out = Path(cfg.out).expanduser()
    features = extract(cfg, model, SlideBags(bags, ids), out, cfg.pooling, bool(cfg.overwrite), backbone=source)
    print(f"wrote {out}: {int(features.valid.sum())} slides x {features.features.shape[1]} ({cfg.pooling})")
    return out

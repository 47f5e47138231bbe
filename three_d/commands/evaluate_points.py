"""``domainfm evaluate data.points=<folder|csv> backbone=<point encoder>``: frozen-encoder protocols on labeled point
clouds (the ``points`` kind's evaluate hook, ``three_d/domain.yaml``): ``protocol=svm`` is the ModelNet linear-SVM
protocol (C chosen on the validation split), ``knn`` / ``linear`` / ``fewshot`` run too.

``data.points`` is a folder with one sub-folder per class holding clouds (any format of
:func:`~domainfm.three_d.points.read_points`) or arrays of shapes (each shape one sample), or a CSV
``path,label[,split][,group]``. Each cloud is prepared as Point-MAE's ModelNet evaluation: ``data.n_points`` points
by farthest point sampling (default: the export's point count), centred and scaled into the unit sphere, no
augmentation, the same points on every run. The encoder's tokens are pooled as the point-cloud papers do for the
SVM: ``pooling=both`` gives ``[max | mean]`` over the patch tokens, ``cls`` the max, ``mean`` the
mean."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.commands.common import output_dir, write_config
from domainfm.commands.evaluate import evaluate_backbones
from domainfm.commands.labeled import as_list
from domainfm.errors import DataError
from domainfm.evaluation.datasets import LabeledSet, check_groups, load_labeled, save_splits, with_splits
from domainfm.evaluation.features import Preprocess
from domainfm.evaluation.protocols import check_protocols
from domainfm.three_d.datasets import PointClouds
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")


class MaxAsClassToken(nn.Module):
    """A point encoder seen by the core's protocols: its tokens with their max prepended as the "class token", so
    ``cls`` pooling is the max, ``mean`` the mean and ``both`` the ``[max | mean]`` feature of the SVM protocol."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.num_prefix_tokens, self.num_features = 1, encoder.num_features
        self.pretrained_cfg = encoder.pretrained_cfg

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(points)
        return torch.cat([tokens.max(dim=1, keepdim=True).values, tokens], dim=1)


class LabeledClouds(Dataset):
    """Labeled clouds: ``(PointClouds of the class folder or file, index in it)`` per sample, prepared with a
    fixed generator per sample (farthest point sampling from a seeded start)."""

    def __init__(self, members: list[tuple[PointClouds, int]], labels: np.ndarray, ids: list[str], n_points: int):
        self.members, self.labels, self.ids, self.n_points = members, labels, ids, int(n_points)
        self.fingerprint_extra = {"n_points": self.n_points, "sampling": "fps", "normalization": "unit_sphere"}

    def __len__(self) -> int:
        return len(self.members)

    def describe(self, i: int) -> str:
        clouds, k = self.members[i]
        return clouds.describe(k)

    def __getitem__(self, i: int) -> dict[str, Any]:
        clouds, k = self.members[i]
        clouds.n_points = self.n_points
        points = clouds.prepare(k, np.random.default_rng(i))["points"]
        return {"image": points, "label": int(self.labels[i]), "meta": {"id": self.ids[i]}}


def labeled_clouds(source: str | Path, root: str | Path | None = None) -> tuple[LabeledSet, list]:
    """``data.points`` as a :class:`LabeledSet` and the ``(PointClouds, index)`` of each of its samples."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        rows = load_labeled(root, source)
        members = []
        for path in rows.paths:
            clouds = PointClouds(path, sampling="fps", augment=False)
            if len(clouds) != 1:
                raise DataError(f"{source}: {path} holds {len(clouds)} shapes; a CSV row names one cloud")
            members.append((clouds, 0))
        return rows, members
    if not source.is_dir():
        raise DataError(f"data.points={source}: give a folder with one sub-folder per class, or a CSV path,label")
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"data.points={source}: {len(classes)} class sub-folder(s); a labeled set needs two or more")
    members, labels, ids = [], [], []
    for label, name in enumerate(classes):
        clouds = PointClouds(source / name, sampling="fps", augment=False)
        for k in range(len(clouds)):
            members.append((clouds, k))
            labels.append(label)
            ids.append(f"{name}/{Path(clouds.describe(k)).relative_to(source / name)}")
    labels = np.asarray(labels)
    data = LabeledSet([source / i for i in ids], ids, labels, classes, None, None, source=f"data.points={source}")
    return data, members


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    protocols = check_protocols(as_list(cfg.protocol))
    write_config(cfg, out)
    data, members = labeled_clouds(cfg.data.points, cfg.data.get("root"))
    order = {i: m for i, m in zip(data.ids, members)}
    data = with_splits(data, val=float(cfg.split.val), test=float(cfg.split.test), seed=int(cfg.split.seed))
    check_groups(data)
    save_splits(data, out / "splits.csv")
    members = [order[i] for i in data.ids]
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    log.info("%s: %d clouds, classes %s, splits %s", data.source, len(data), data.classes, counts)

    def open_data(source: str):
        encoder = load_backbone(source).eval()
        if getattr(encoder, "domainfm_architecture", None) != "domainfm_point_transformer":
            raise DataError(f"{source} is not a point encoder; data.points needs one (recipe=three_d/point_mae)")
        n = int(cfg.data.get("n_points") or (encoder.pretrained_cfg.get("input_size") or [1024])[0])
        model = MaxAsClassToken(encoder)
        preprocess = Preprocess(3, (n,), [0.0], [1.0])
        return model, preprocess, LabeledClouds(members, data.labels, data.ids, n)

    return evaluate_backbones(cfg, out, protocols, data, open_data, what="point clouds")

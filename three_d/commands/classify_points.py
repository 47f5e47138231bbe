"""``domainfm evaluate|finetune data.points=<folder|csv> backbone=<point encoder>``: classification of labeled point
clouds through the core (the ``points`` kind's hooks, ``three_d/domain.yaml``). ``evaluate``: frozen-encoder
protocols, ``protocol=svm`` the ModelNet linear-SVM protocol (C chosen on the validation split), ``knn`` /
``linear`` / ``fewshot`` too. ``finetune``: the core recipe (layer-wise lr decay, best-on-val checkpoint, test once,
the finetuned encoder exported) on Point-MAE's finetuning views (:class:`LabeledClouds`); ``finetune.pooling=both``
is ``[max | mean]``.

``data.points`` is a folder with one sub-folder per class holding clouds (any format of
:func:`~domainfm.three_d.points.read_points`) or arrays of shapes (each shape one sample), or a CSV
``path,label[,split][,group]``. Each cloud is prepared as Point-MAE's ModelNet evaluation: ``data.n_points`` points
by farthest point sampling (default: the export's point count), centred and scaled into the unit sphere, no
augmentation, the same points on every run. The encoder's tokens are pooled as the point-cloud papers do for the
SVM: ``pooling=both`` gives ``[max | mean]`` over the patch tokens, ``cls`` the max, ``mean`` the mean (the encoder's
prefix token is the max: :class:`~domainfm.three_d.point_encoder.PointTransformer`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.commands.common import output_dir, write_config
from domainfm.commands.evaluate import evaluate_backbones
from domainfm.commands.finetune import FinetuneInput, finetune_backbones
from domainfm.commands.labeled import as_list, split_labeled
from domainfm.engine.runlock import RunLock
from domainfm.errors import DataError
from domainfm.evaluation.datasets import LabeledSet, load_labeled
from domainfm.evaluation.features import Preprocess
from domainfm.evaluation.protocols import check_protocols
from domainfm.three_d.datasets import PointClouds
from domainfm.three_d.point_encoder import PointBackbone
from domainfm.three_d.points import normalize_unit_sphere, subsample
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")


class LabeledClouds(Dataset):
    """Labeled clouds: ``(PointClouds of the class folder or file, index in it)`` per sample. Evaluation: prepared
    with a fixed generator per sample (farthest point sampling from a seeded start, no augmentation). ``train``:
    Point-MAE's finetuning view from the sample's seed: farthest point sampling to ``1.2 n`` (1,200 for 1,024),
    ``n`` of them at random, unit sphere, per-axis scale U(2/3, 3/2) and shift U(-0.2, 0.2)."""

    def __init__(
        self, members: list[tuple[PointClouds, int]], labels: np.ndarray, ids: list[str], n_points: int,
        train: bool = False,
    ):  # fmt: skip
        self.members, self.labels, self.ids, self.n_points = members, labels, ids, int(n_points)
        self.train = bool(train)
        self.fingerprint_extra = {"n_points": self.n_points, "sampling": "fps", "normalization": "unit_sphere"}

    def __len__(self) -> int:
        return len(self.members)

    def describe(self, i: int) -> str:
        clouds, k = self.members[i]
        return clouds.describe(k)

    def __getitem__(self, i: int) -> dict[str, Any]:
        clouds, k = self.members[i]
        if self.train:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))  # the sample's seed
            xyz = subsample(clouds.points(k), round(1.2 * self.n_points), "fps", rng)
            xyz = normalize_unit_sphere(xyz[rng.choice(len(xyz), self.n_points, replace=False)])
            xyz = xyz * rng.uniform(2 / 3, 3 / 2, size=3) + rng.uniform(-0.2, 0.2, size=3)
            points = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))
        else:
            rng = np.random.default_rng(i)
            xyz = normalize_unit_sphere(subsample(clouds.points(k), self.n_points, "fps", rng))
            points = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))
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


def labeled_points(cfg: DictConfig, out: Path) -> tuple[LabeledSet, dict[str, tuple[PointClouds, int]]]:
    """``cfg.data.points`` with the core's splits (written to ``splits.csv``) and each sample id's cloud."""
    data, members = labeled_clouds(cfg.data.points, cfg.data.get("root"))
    member_of = dict(zip(data.ids, members))
    return split_labeled(data, cfg, out, "clouds"), member_of


def open_points(cfg: DictConfig, source: str) -> tuple[nn.Module, Preprocess, int]:
    """The point encoder of ``source``, its preprocessing record and the points per cloud."""
    encoder = load_backbone(source).eval()
    if not isinstance(encoder, PointBackbone):
        raise DataError(f"{source} is not a point encoder; data.points needs one (recipe=three_d/point_mae)")
    n = int(cfg.data.get("n_points") or (encoder.pretrained_cfg.get("input_size") or [1024])[0])
    return encoder, Preprocess(3, (n,), [0.0], [1.0]), n


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    protocols = check_protocols(as_list(cfg.protocol))
    write_config(cfg, out)
    data, member_of = labeled_points(cfg, out)

    def open_data(source: str):
        encoder, preprocess, n = open_points(cfg, source)
        members = [member_of[i] for i in data.ids]
        return encoder, preprocess, LabeledClouds(members, data.labels, data.ids, n)

    return evaluate_backbones(cfg, out, protocols, data, open_data, what="point clouds")


def _train_view(points: torch.Tensor) -> torch.Tensor:
    """Marks the training split for :class:`LabeledClouds` (which draws Point-MAE's finetuning view itself)."""
    return points


def finetune(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    with RunLock(out, "domainfm finetune"):
        write_config(cfg, out)
        data, member_of = labeled_points(cfg, out)

        def point_input(source: str) -> FinetuneInput:
            encoder, preprocess, n = open_points(cfg, source)

            def make_set(subset: LabeledSet, view) -> LabeledClouds:
                members = [member_of[i] for i in subset.ids]
                return LabeledClouds(members, subset.labels, subset.ids, n, train=view is _train_view)

            return encoder.train(), preprocess, make_set, _train_view

        return finetune_backbones(cfg, out, data, point_input, what="point clouds")

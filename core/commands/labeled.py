"""Shared steps of ``extract``, ``evaluate`` and ``finetune``: backbone sources, labeled data with splits, and
a backbone checked against the data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from domainfm.errors import ConfigError
from domainfm.evaluation.datasets import LabeledSet, check_groups, load_labeled, save_splits, with_splits
from domainfm.evaluation.features import Features, Preprocess, check_channels, extract_features, load_eval_backbone
from omegaconf import DictConfig, ListConfig
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")


def as_list(value: Any) -> list[str]:
    """A list from a list config, a comma-separated string or one value."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def backbone_names(sources: list[str]) -> dict[str, str]:
    """A short, unique, file-system safe name per backbone source (run folder name, hub id, timm name)."""
    names: dict[str, str] = {}
    for source in sources:
        tail = source.split(":", 1)[1] if source.startswith(("hf-hub:", "timm:")) else source
        path = Path(tail)
        name = path.parent.name if path.name == "export" else (path.stem if path.suffix else path.name)
        name = (name or tail).replace("/", "_").replace(" ", "_")
        base, i = name, 2
        while name in names.values():
            name, i = f"{base}_{i}", i + 1
        names[source] = name
    return names


def backbone_sources(cfg: DictConfig) -> list[str]:
    sources = as_list(cfg.backbone)
    if not sources:
        raise ConfigError(
            "backbone is empty: give a run or export folder, hf-hub:<org>/<name>, timm:<name> or a checkpoint file"
        )
    return list(dict.fromkeys(sources))


def labeled_data(cfg: DictConfig, out_dir: Path) -> LabeledSet:
    """``data.root`` / ``data.csv`` with train/val/test splits (made and saved as ``<out_dir>/splits.csv`` when the
    data has none)."""
    return split_labeled(load_labeled(cfg.data.get("root"), cfg.data.get("csv")), cfg, out_dir)


def split_labeled(data: LabeledSet, cfg: DictConfig, out_dir: Path, what: str = "samples") -> LabeledSet:
    """``data`` with train/val/test splits (its own, or made from ``cfg.split``), checked for patients (groups) in
    two splits, written to ``<out_dir>/splits.csv`` and logged."""
    had_splits = data.splits is not None and (data.splits == "val").any()
    data = with_splits(data, val=float(cfg.split.val), test=float(cfg.split.test), seed=int(cfg.split.seed))
    check_groups(data)
    path = save_splits(data, out_dir / "splits.csv")
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    how = "from the data" if had_splits else f"made (seed {cfg.split.seed})"
    log.info(
        "%s: %d %s, %d classes, splits %s %s -> %s", data.source, len(data), what, len(data.classes), how, counts, path
    )
    return data


def open_backbone(source: str, cfg: DictConfig, data: LabeledSet) -> tuple[nn.Module, Preprocess, int]:
    """The backbone, its preprocessing and the channel count to read the data with (checked against it)."""
    in_chans = cfg.get("in_chans")
    model, preprocess = load_eval_backbone(source, arch=cfg.get("arch"), in_chans=in_chans)
    channels = check_channels(data.paths, preprocess.in_chans, source, cfg.data.get("channels"))
    return model, preprocess, channels


def extract(
    cfg: DictConfig,
    model: nn.Module,
    dataset: Dataset,
    out: Path | None,
    pooling: str,
    overwrite: bool,
    desc: str = "extract",
    **meta: str,
) -> Features:
    """:func:`extract_features` with the command's ``data``, ``device``, ``precision`` and ``progress`` settings."""
    return extract_features(
        model,
        dataset,
        out=out,
        pooling=pooling,
        batch_size=int(cfg.data.batch_size),
        num_workers=cfg.data.num_workers,
        device=cfg.device,
        precision=cfg.precision,
        progress=bool(cfg.progress),
        strict=bool(cfg.data.strict),
        overwrite=overwrite,
        meta=meta,
        desc=desc,
    )

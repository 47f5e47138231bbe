"""``domainfm extract backbone=<...> data.root=<...> out=<file.h5>``: features of a dataset into ``.h5``; a
domain's data kind (``domainfm.plugins.kind_hook``) is handed to that domain's extract hook."""

from __future__ import annotations

import json
from pathlib import Path

from domainfm.commands.common import apply_data_limits
from domainfm.commands.labeled import backbone_sources, extract
from domainfm.data.folder import list_files
from domainfm.errors import ConfigError
from domainfm.evaluation.datasets import ImageList, LabeledSet, load_labeled
from domainfm.evaluation.features import check_channels, fingerprint, load_eval_backbone
from domainfm.plugins import kind_hook
from omegaconf import DictConfig


def _dataset(cfg: DictConfig) -> LabeledSet | list[Path]:
    """A labeled set (CSV, or class folders), or the plain list of images of an unlabeled folder."""
    if cfg.data.get("csv"):
        return load_labeled(cfg.data.get("root"), cfg.data.csv)
    files = list_files(cfg.data.root) if cfg.data.get("root") else []
    root = Path(cfg.data.root).expanduser() if files else None
    if root and root.is_dir() and all(len(f.relative_to(root).parts) > 1 for f in files):
        return load_labeled(root)
    if not files:
        raise ConfigError("set data.root=<folder of images> or data.csv=<path,label csv>")
    return files


def run(cfg: DictConfig) -> Path:
    apply_data_limits(cfg)
    sources = backbone_sources(cfg)
    if len(sources) != 1:
        raise ConfigError(f"extract takes one backbone, got {len(sources)}; run it once per backbone")
    hook = kind_hook(cfg, "extract")  # a domain's data (data.kind, or the key a domain declares)
    if hook is not None:
        return hook(cfg, sources[0])
    data = _dataset(cfg)
    paths = data.paths if isinstance(data, LabeledSet) else data
    model, preprocess = load_eval_backbone(sources[0], arch=cfg.get("arch"), in_chans=cfg.get("in_chans"))
    channels = check_channels(paths, preprocess.in_chans, sources[0], cfg.data.get("channels"))
    if isinstance(data, LabeledSet):
        dataset, classes = ImageList.of(data, channels, preprocess.view()), data.classes
    else:
        root = Path(cfg.data.root).expanduser()
        ids = [p.relative_to(root).as_posix() if p != root else p.name for p in paths]
        dataset, classes = ImageList(paths, None, ids, channels, preprocess.view()), []
    out = Path(cfg.out).expanduser()
    features = extract(
        cfg,
        model,
        dataset,
        out,
        cfg.pooling,
        bool(cfg.overwrite),
        backbone=sources[0],
        classes=json.dumps(classes),
        fingerprint=fingerprint(model, preprocess),
        preprocess=json.dumps(preprocess.to_dict()),
    )
    good = int(features.valid.sum())
    print(f"wrote {out}: {good} x {features.features.shape[1]} features ({cfg.pooling}), {len(classes)} classes")
    if features.skipped:
        print(f"skipped {len(features.skipped)} unreadable files:")
        for s in features.skipped[:20]:
            print(f"  - {s}")
    return out

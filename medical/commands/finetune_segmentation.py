"""``domainfm finetune task=segmentation data.csv=<image,label[,split][,group]> backbone=<...|[a,b]>``: UNETR
segmentation finetuning of pretrained ViTs (2D or 3D), Dice / HD95 per class with bootstrap CIs on the test split
(the ``segmentation`` kind's finetune hook, ``medical/domain.yaml``; the recipe: :mod:`domainfm.medical.segmentation`).

Each backbone reads the volumes with its own preprocessing: the intensity, modality and spacing its export
records (``domainfm pretrain`` on medical data writes them), else ``data.intensity`` / ``data.modality``
/ ``data.spacing``; its mean / std. Splits are grouped by the ``group`` column (a patient's studies stay
together) and written to ``splits.csv``. Per backbone: ``export/`` (the finetuned encoder, loadable as any
domainfm backbone, plus ``segmenter.safetensors`` / ``segmenter.json``: the whole UNETR), ``predictions/`` (test
label maps as NIfTI on the image grid, ``segmentation.save_predictions``), ``report/segmentation.png`` (truth and
prediction over test slices), ``results.json``; one ``summary.md`` table side by side."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from domainfm.commands.common import output_dir, write_config
from domainfm.commands.labeled import backbone_names, backbone_sources
from domainfm.commands.pretrain import trainer_config
from domainfm.engine.export import export_backbone
from domainfm.engine.runlock import RunLock
from domainfm.errors import ConfigError, DataError
from domainfm.evaluation.datasets import LabeledSet, check_groups, with_splits
from domainfm.evaluation.training import fit_best
from domainfm.medical.intensity import Intensity
from domainfm.medical.labeled_volumes import open_for_config
from domainfm.medical.segmentation import (
    Case,
    SegmentationPatches,
    Segmenter,
    load_case,
    overlay_figure,
    read_segmentation_csv,
    render_segmentation,
    score_cases,
    segmentation_scores,
    write_prediction,
    write_segmenter,
)
from domainfm.medical.unetr import spatial_dims
from domainfm.reports.curves import plot_loss_curve
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("domainfm")
_MONITORS = ("val_dice", "val_loss")


def finetune(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.data.get("csv"):
        raise ConfigError("task=segmentation needs data.csv=<CSV with columns image,label[,split][,group]>")
    out = output_dir(cfg)
    with RunLock(out, "domainfm finetune"):
        write_config(cfg, out)
        data, masks = read_segmentation_csv(cfg.data.csv, cfg.data.get("root"))
        data = with_splits(data, val=float(cfg.split.val), test=float(cfg.split.test), seed=int(cfg.split.seed))
        check_groups(data)
        base = Path(cfg.data.root) if cfg.data.get("root") else Path(cfg.data.csv).parent
        _save_splits(data, masks, base, out / "splits.csv")
        return _finetune_all(cfg, out, data, masks)


def _save_splits(data: LabeledSet, masks: dict[str, Path], base: Path, path: Path) -> None:
    """``image,label,split[,group]``: usable again as ``data.csv`` (with the same ``data.root``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "split"] + (["group"] if data.groups is not None else []))
        for i, image in enumerate(data.ids):
            row = [image, str(masks[image].relative_to(base)), data.splits[i]]
            writer.writerow(row + ([data.groups[i]] if data.groups is not None else []))


def _finetune_all(cfg: DictConfig, out: Path, data: LabeledSet, masks: dict[str, Path]) -> dict[str, Any]:
    seg = cfg.segmentation
    tcfg = trainer_config(cfg)
    if tcfg.monitor not in _MONITORS:  # the classification default (val_balanced_accuracy) has no meaning here
        tcfg = dataclasses.replace(tcfg, monitor="val_dice", monitor_mode="max")
    tcfg = dataclasses.replace(tcfg, batch_size=int(seg.batch_size))
    sources = backbone_sources(cfg)
    names = backbone_names(sources)
    loaded: dict[tuple, dict[str, list[Case]]] = {}
    results, backbones, classes = {}, {}, None
    for source in sources:
        name = names[source]
        run_dir = out if len(sources) == 1 else out / name
        model, reading = open_for_config(cfg, source)
        key = json.dumps(reading, sort_keys=True)
        if key not in loaded:
            loaded[key] = _load_cases(data, masks, reading)
        cases = loaded[key]
        classes = classes or _classes(seg, cases["train"] + cases["val"])
        k = len(classes)
        dims = spatial_dims(model)
        roi = list(seg.roi) if seg.roi else list(model.pretrained_cfg["input_size"][1:])
        if len(roi) != dims:
            raise ConfigError(f"segmentation.roi={roi}: a {dims}D encoder needs {dims} sizes")
        train_blocks, skip_norm = cfg.finetune.train_blocks, bool(seg.skip_norm)
        method = Segmenter(
            model, k, int(seg.feature_size), float(cfg.finetune.drop_path), float(cfg.finetune.layer_decay),
            None if train_blocks is None else int(train_blocks), skip_norm,
        )  # fmt: skip
        train = SegmentationPatches(
            cases["train"], roi, int(seg.samples_per_volume), float(seg.pos_fraction), float(seg.flip),
            float(seg.rot90), float(seg.intensity_scale), float(seg.intensity_shift), dims,
        )  # fmt: skip

        def validate(m: Segmenter, val=cases["val"], k=k, roi=roi) -> dict[str, float]:
            rows = score_cases(m, val, k, roi, float(seg.overlap), int(seg.sw_batch_size))
            with np.errstate(all="ignore"):
                per_case = [np.nanmean(r["dice"]) if np.isfinite(r["dice"]).any() else 0.0 for r in rows]
            return {"val_dice": float(np.mean(per_case))}

        summary, best = fit_best(method, train, run_dir, tcfg, validate, desc="finetune")
        rows = score_cases(method, cases["test"], k, roi, float(seg.overlap), int(seg.sw_batch_size))
        scores = segmentation_scores(rows, classes, int(cfg.metrics.bootstrap), int(cfg.metrics.seed))
        scores.update(best_step=best, steps=summary.steps, best_val=summary.best_metric, monitor=tcfg.monitor)
        settings = {"classes": classes, "roi": roi, "feature_size": int(seg.feature_size), "reading": reading,
                    "skip_norm": skip_norm,
                    "source": source}  # fmt: skip
        preprocess = {**reading, "in_chans": model.patch_embed.proj.in_channels, "img_size": roi}
        export = export_backbone(
            method.backbone.cpu(),
            run_dir / "export",
            preprocess,
            tag="domainfm-finetune-segmentation",
            card={
                "recipe": f"UNETR segmentation finetune of {source}",
                "method": "supervised finetuning (UNETR)",
                "data": f"{len(data)} labeled volumes",
            },  # fmt: skip
            extra_files=lambda folder, m=method, s=settings: write_segmenter(m, folder, s),
        )
        if seg.save_predictions:
            for case, row in zip(cases["test"], rows):
                write_prediction(row["prediction"], case.affine, run_dir / "predictions" / f"{_safe(case.id)}.nii.gz")
        plot_loss_curve(run_dir)
        overlay_figure(cases["test"], [r["prediction"] for r in rows], classes, run_dir / "report" / "segmentation.png")
        per_case = [{"id": r["id"], "dice": r["dice"], "hd95": r["hd95"]} for r in rows]
        (run_dir / "results.json").write_text(json.dumps({**scores, "per_case": per_case}, indent=2, default=_json))
        results[name] = scores
        backbones[name] = {"source": source, "run_dir": str(run_dir), "export": str(export)}
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    notes = [
        f"Data: {data.source} ({len(data)} labeled volumes, classes {classes}, split sizes {counts}).",
        f"Checkpoint chosen on the validation split by {tcfg.monitor} ({tcfg.monitor_mode}).",
    ]
    summary_md = render_segmentation(results, classes, notes)
    (out / "summary.md").write_text(summary_md)
    info = {"data": data.source, "classes": classes, "splits": counts, "backbones": backbones,
            "results": results, "config": OmegaConf.to_container(cfg, resolve=True)}  # fmt: skip
    if len(sources) > 1:
        (out / "results.json").write_text(json.dumps(info, indent=2, default=_json))
    print(summary_md, flush=True)
    print(f"results: {out / 'summary.md'}; finetuned: " + ", ".join(b["export"] for b in backbones.values()))
    return results


def _json(value: Any) -> Any:
    return None if isinstance(value, float) and not np.isfinite(value) else str(value)


def _safe(case_id: str) -> str:
    stem = re.sub(r"\.(nii\.gz|nii|nrrd|png|jpe?g)$", "", case_id, flags=re.I)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


def _load_cases(data: LabeledSet, masks: dict[str, Path], reading: dict) -> dict[str, list[Case]]:
    intensity = Intensity(**reading["intensity"])
    cases: dict[str, list[Case]] = {"train": [], "val": [], "test": []}
    for i, image in enumerate(data.ids):
        case = load_case(
            image, data.paths[i], masks[image], intensity, reading["modality"], reading["mean"], reading["std"],
            reading["spacing"],
        )  # fmt: skip
        cases[data.splits[i]].append(case)
    log.info("segmentation: %s volumes per split", {s: len(c) for s, c in cases.items()})
    return cases


def _classes(seg: DictConfig, cases: list[Case]) -> list[str]:
    top = max(int(c.label.max()) for c in cases)
    if seg.classes:
        names = [str(c) for c in seg.classes]
        if len(names) <= top:
            raise DataError(
                f"segmentation.classes names {len(names)} classes but the label maps hold values up to {top}"
            )
        return names
    return ["background"] + [f"label_{v}" for v in range(1, top + 1)]

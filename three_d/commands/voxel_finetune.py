"""``domainfm finetune data.grids=<labeled .npz grids> backbone=<grid encoder>[,...]``: NeRF-MAE's semantic voxel
labelling, finetuned (:mod:`domainfm.three_d.voxel_segmentation`), several backbones side by side on the same
scene splits as ``domainfm evaluate data.grids=`` (the ``grids`` kind's finetune hook, ``three_d/domain.yaml``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from domainfm.commands.common import output_dir, write_config
from domainfm.commands.labeled import backbone_names, backbone_sources
from domainfm.commands.pretrain import trainer_config
from domainfm.engine.checkpoint import atomic_write_bytes
from domainfm.engine.export import export_backbone
from domainfm.engine.runlock import RunLock
from domainfm.errors import ConfigError
from domainfm.evaluation.training import fit_best
from domainfm.reports.curves import plot_loss_curve
from domainfm.three_d.commands.voxel_probe import _plain, open_grid_encoder, write_splits
from domainfm.three_d.grid_figures import segmentation_figure
from domainfm.three_d.voxel_probe import read_labeled_grids, scene_scores, segmentation_metrics, split_scenes
from domainfm.three_d.voxel_segmentation import (
    GridSegmenter,
    LabeledGridSet,
    balanced_weights,
    predict_labels,
    scene_confusions,
)
from omegaconf import DictConfig, OmegaConf


def finetune(cfg: DictConfig) -> dict[str, Any]:
    vf = cfg.voxel_finetune
    if vf.class_weights not in ("balanced", "none"):
        raise ConfigError(f"voxel_finetune.class_weights={vf.class_weights!r}; valid values: balanced, none")
    out = output_dir(cfg)
    with RunLock(out, "domainfm finetune"):
        write_config(cfg, out)
        scenes = read_labeled_grids(cfg.data.grids)
        splits = split_scenes(len(scenes), int(cfg.split.seed), float(cfg.voxel_probe.val), float(cfg.voxel_probe.test))
        write_splits(cfg, scenes, splits, out)
        by_split = {s: [sc for sc, sp in zip(scenes, splits) if sp == s] for s in ("train", "val", "test")}
        if vf.train_scenes is not None:  # label efficiency: the first n training scenes, val and test unchanged
            if not 1 <= int(vf.train_scenes) <= len(by_split["train"]):
                raise ConfigError(f"voxel_finetune.train_scenes={vf.train_scenes}: give 1 .. {len(by_split['train'])} "
                                  "(the training scenes of this split)")  # fmt: skip
            by_split["train"] = by_split["train"][: int(vf.train_scenes)]
        classes = int(max(s.labels.max() for s in scenes))
        weights = balanced_weights(by_split["train"], classes) if vf.class_weights == "balanced" else None
        tcfg = dataclasses.replace(
            trainer_config(cfg), batch_size=int(vf.batch_size), lr=float(vf.lr), weight_decay=float(vf.weight_decay),
            clip_grad=float(vf.clip_grad), monitor="val_miou", monitor_mode="max",
        )  # fmt: skip
        sources = backbone_sources(cfg)
        names = backbone_names(sources)
        results, exports = {}, {}
        for source in sources:
            name = names[source]
            run_dir = out if len(sources) == 1 else out / name
            encoder = open_grid_encoder(source).train()
            size = int(encoder.pretrained_cfg["input_size"][1])
            method = GridSegmenter(encoder, classes, weights, float(vf.drop_path), float(vf.layer_decay))
            train = LabeledGridSet(by_split["train"], size, augment=bool(vf.augment))
            val, test = LabeledGridSet(by_split["val"], size), LabeledGridSet(by_split["test"], size)  # read once

            def validate(m: GridSegmenter, val=val) -> dict[str, float]:
                return {"val_miou": segmentation_metrics(sum(scene_confusions(m, val)))["miou"]}

            summary, best = fit_best(method, train, run_dir, tcfg, validate, desc=f"finetune {name}")
            method.cpu()
            scores = scene_scores(scene_confusions(method, test), int(cfg.metrics.bootstrap), int(cfg.metrics.seed))
            scores.update(best_step=best, steps=summary.steps, best_val=summary.best_metric, source=source)
            pcfg = encoder.pretrained_cfg
            preprocess = {**dict(pcfg.get("domainfm") or {}), "mean": pcfg["mean"], "std": pcfg["std"],
                          "in_chans": 4, "img_size": [size] * 3}  # fmt: skip
            exports[name] = export_backbone(
                method.backbone, run_dir / "export", preprocess, tag="domainfm-finetune-voxel-semantics",
                card={"recipe": f"semantic voxel finetune of {source}", "method": "supervised finetuning "
                      "(NeRF-MAE semantic voxel head)", "data": f"{len(by_split['train'])} labeled scenes"},
                extra_files=lambda folder, m=method: torch.save(
                    {"head": m.head.state_dict(), "classes": m.classes}, Path(folder) / "voxel_head.pt"),
            )  # fmt: skip
            plot_loss_curve(run_dir)
            shown = [test.item(i) for i in range(min(4, len(test)))]
            pictures = [(g, y[0].numpy(), predict_labels(method, g, size)) for g, y in shown]
            segmentation_figure(pictures, run_dir / "report" / "voxels.png")
            atomic_write_bytes(json.dumps(scores, indent=2, default=_plain).encode(), run_dir / "results.json")
            results[name] = scores
        counts = {s: len(v) for s, v in by_split.items()}
        lines = ["# domainfm finetune: semantic voxels", "", "| backbone | mIoU | mAcc | allAcc | best step |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for name, r in results.items():
            cell = {m: f"{r['metrics'][m]:.3f} [{r['ci'][m][0]:.3f}, {r['ci'][m][1]:.3f}]" for m in r["metrics"]}
            lines.append(f"| {name} | {cell['miou']} | {cell['macc']} | {cell['allacc']} | {r['best_step']} |")
        lines += [
            "",
            f"Data: data.grids={cfg.data.grids} ({len(scenes)} scenes, split sizes {counts}, {classes} "
            "classes); checkpoint chosen on the validation scenes' mIoU; 95 % CIs resample test scenes.",
        ]
        summary_md = "\n".join(lines)
        atomic_write_bytes(summary_md.encode(), out / "summary.md")
        info = {"results": results, "exports": {k: str(v) for k, v in exports.items()},
                "config": OmegaConf.to_container(cfg, resolve=True)}  # fmt: skip
        if len(sources) > 1:
            atomic_write_bytes(json.dumps(info, indent=2, default=_plain).encode(), out / "results.json")
        print(summary_md, flush=True)
        print(f"results: {out / 'summary.md'}; finetuned: " + ", ".join(map(str, exports.values())))
        return results

"""``domainfm finetune backbone=<...> data.root=<...>``: finetune on the train split, select on val, report test."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domainfm.commands.common import apply_data_limits, output_dir, write_config
from domainfm.commands.labeled import backbone_names, backbone_sources, labeled_data, open_backbone
from domainfm.commands.pretrain import trainer_config
from domainfm.engine.export import export_backbone
from domainfm.engine.runlock import RunLock
from domainfm.evaluation.datasets import LabeledSet
from domainfm.evaluation.features import Preprocess, extract_features
from domainfm.evaluation.finetune import MakeSet, finetune, image_sets, predict_images
from domainfm.evaluation.report import plot_embedding, plot_result, render_summary, write_results
from domainfm.evaluation.results import ProtocolResult
from domainfm.plugins import kind_hook
from domainfm.reports.curves import plot_loss_curve
from omegaconf import DictConfig, OmegaConf
from torch import nn

log = logging.getLogger("domainfm")


def run(cfg: DictConfig) -> dict[str, Any]:
    apply_data_limits(cfg)
    hook = kind_hook(cfg, "finetune")  # a domain's data kind (chips, ...): that domain reads it
    if hook is not None:
        return hook(cfg)
    out = output_dir(cfg)
    with RunLock(out, "domainfm finetune"):
        write_config(cfg, out)
        data = labeled_data(cfg, out)
        return finetune_backbones(cfg, out, data, image_input(cfg, data))


FinetuneInput = tuple[nn.Module, Preprocess, MakeSet, Callable | None]
MoreResults = Callable[[str, LabeledSet, ProtocolResult, Path], list[ProtocolResult]]


def image_input(cfg: DictConfig, data: LabeledSet) -> Callable[[str], FinetuneInput]:
    """``open_input`` for image files: the backbone checked against the images' channels, the core's views."""

    def open_input(source: str) -> FinetuneInput:
        model, preprocess, channels = open_backbone(source, cfg, data)
        return model, preprocess, image_sets(channels), None

    return open_input


def finetune_backbones(
    cfg: DictConfig,
    out: Path,
    data: LabeledSet,
    open_input: Callable[[str], FinetuneInput],
    what: str = "images",
    more_results: MoreResults | None = None,
) -> dict[str, Any]:
    """Finetune every backbone of ``cfg.backbone`` on ``data`` (with splits), test the best-on-val checkpoint,
    export it; one side-by-side table. ``open_input(source)`` gives the backbone, its preprocessing, the
    ``make_set(subset, view)`` that reads a split and the training view (``None``: the core's RGB-style crop +
    flips); a domain's finetune hook passes its own (chips, volumes, ...). ``more_results(name, test, result,
    run_dir)`` adds rows computed from the test predictions (e.g. per video) after the per-sample row."""
    sources = backbone_sources(cfg)
    tcfg = trainer_config(cfg)
    test = data.select("test")
    names = backbone_names(sources)
    ft = OmegaConf.to_container(cfg.finetune, resolve=True)
    results, backbones = {}, {}
    for source in sources:
        name = names[source]
        run_dir = out if len(sources) == 1 else out / name
        model, preprocess, make_set, train_view = open_input(source)
        method, summary, best = finetune(
            model, preprocess, data, run_dir, tcfg, make_set=make_set, train_view=train_view, **ft
        )
        test_set = make_set(test, preprocess.view())
        probs = predict_images(method, test_set, tcfg.batch_size, tcfg.num_workers, method_precision(tcfg))
        details = {
            "selected": f"step {best} ({tcfg.monitor})",
            "best_step": best,
            "steps": summary.steps,
            "stopped_early": summary.stopped_early,
            "best_val": summary.best_metric,
        }
        result = ProtocolResult.from_predictions(
            "finetune", data.classes, test.labels, probs, int(cfg.metrics.bootstrap), int(cfg.metrics.seed), details
        )
        results[name] = [result, *(more_results(name, test, result, run_dir) if more_results else [])]
        domain_keys = dict((method.backbone.pretrained_cfg or {}).get("domainfm") or {})  # MPP, bands, ...
        export = export_backbone(
            method.backbone.cpu(),
            run_dir / "export",
            {**domain_keys, **preprocess.to_dict()},
            tag="domainfm-finetune",
            card={"recipe": f"finetune of {source}", "method": "supervised finetuning", "data": data.source},
        )
        backbones[name] = {"source": source, "run_dir": str(run_dir), "export": str(export)}
        if cfg.report.plots:
            _plots(cfg, result, method.backbone, test_set, test.labels, data.classes, run_dir, name)
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    notes = [
        f"Data: {data.source} ({len(data)} {what}, {len(data.classes)} classes, split sizes {counts}).",
        f"Checkpoint chosen on the validation split by {tcfg.monitor} ({tcfg.monitor_mode}).",
    ]
    summary_md = render_summary(results, "domainfm finetune", notes)
    settings = OmegaConf.to_container(cfg, resolve=True)
    info = {"data": data.source, "classes": data.classes, "splits": counts, "backbones": backbones, "config": settings}
    write_results(out, results, info, summary_md)
    print(summary_md, flush=True)
    print(
        f"results: {out / 'results.json'}, {out / 'summary.md'}; finetuned backbone(s): "
        + ", ".join(b["export"] for b in backbones.values())
    )
    return {name: [r.to_dict() for r in rs] for name, rs in results.items()}


def method_precision(tcfg) -> str:
    from domainfm.engine.runtime import resolve_device, resolve_precision

    return resolve_precision(tcfg.precision, resolve_device(tcfg.device))


def _plots(cfg, result, backbone, test_set, labels, classes, run_dir: Path, name: str) -> None:
    plot_loss_curve(run_dir)
    plot_result(result, run_dir / "report", f"{name}: finetune")
    features = extract_features(
        backbone,
        test_set,
        pooling=cfg.finetune.pooling,
        batch_size=int(cfg.data.batch_size),
        num_workers=0,
        device=cfg.trainer.device,
        progress=False,
        meta={"classes": json.dumps(classes)},
    )
    plot_embedding(
        features.features,
        labels,
        classes,
        run_dir / "report" / "embedding.png",
        f"{name} finetuned (test)",
        cfg.report.embedding,
        int(cfg.report.max_points),
        int(cfg.trainer.seed),
    )

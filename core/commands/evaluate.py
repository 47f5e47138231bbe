"""``domainfm evaluate protocol=<knn|linear|fewshot|abmil|all> backbone=<...|[a,b]> data.root=<...>``:
frozen-backbone protocols, one side-by-side table for several backbones."""

from __future__ import annotations

import json
import logging
from typing import Any

from domainfm.commands.common import output_dir, write_config
from domainfm.commands.labeled import (
    as_list,
    backbone_names,
    backbone_sources,
    extract,
    labeled_data,
    open_backbone,
)
from domainfm.evaluation.datasets import ImageList
from domainfm.evaluation.features import fingerprint
from domainfm.evaluation.protocols import check_protocols, run_protocols
from domainfm.evaluation.report import plot_embedding, plot_result, render_summary, write_results
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("domainfm")


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    protocols = check_protocols(as_list(cfg.protocol))
    sources = backbone_sources(cfg)
    write_config(cfg, out)
    data = labeled_data(cfg, out)
    settings = OmegaConf.to_container(cfg, resolve=True)
    names = backbone_names(sources)
    results, backbones = {}, {}
    for source in sources:
        name = names[source]
        model, preprocess, channels = open_backbone(source, cfg, data)
        features = extract(
            cfg,
            model,
            ImageList.of(data, channels, preprocess.view()),
            out / name / "features.h5" if cfg.cache_features else None,
            pooling="both",
            overwrite=True,
            desc=f"extract {name}",
            backbone=source,
            classes=json.dumps(data.classes),
            fingerprint=fingerprint(model, preprocess),
        )
        results[name] = run_protocols(features, data, protocols, settings, out / name)
        backbones[name] = {"source": source, "preprocess": preprocess.to_dict(), "skipped_files": features.skipped}
        if cfg.report.plots:
            for r in results[name]:
                plot_result(r, out / name / r.protocol.replace(" ", "_"), f"{name}: {r.protocol}")
            keep = features.valid
            plot_embedding(
                features.pooled(cfg.pooling)[keep],
                data.labels[keep],
                data.classes,
                out / name / "embedding.png",
                f"{name} ({cfg.pooling})",
                cfg.report.embedding,
                int(cfg.report.max_points),
                int(cfg.seed),
            )
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    notes = [f"Data: {data.source} ({len(data)} images, {len(data.classes)} classes, split sizes {counts})."]
    summary = render_summary(results, "domainfm evaluate", notes)
    info = {"data": data.source, "classes": data.classes, "splits": counts, "backbones": backbones, "config": settings}
    write_results(out, results, info, summary)
    print(summary, flush=True)
    print(f"results: {out / 'results.json'}, {out / 'summary.md'}, splits: {out / 'splits.csv'}")
    return {name: [r.to_dict() for r in rs] for name, rs in results.items()}

"""``domainfm evaluate protocol=<knn|linear|fewshot|abmil|zeroshot|all> backbone=<...|[a,b]> data.root=<...>``:
frozen-backbone protocols, one side-by-side table for several backbones (``zeroshot``: CLIP exports, with
``zeroshot.prompts``).

``domainfm evaluate protocol=retrieval backbone=<CLIP export> data.root=<images> data.captions=<json|csv>``:
image <-> text retrieval, R@1/5/10 both ways and mean recall (per language too).

``domainfm evaluate protocol=abmil features=<dir> data.csv=<slides.csv>``: ABMIL on bags that are already
extracted, one ``.h5`` per slide (``domainfm extract`` on slides); the CSV's ``path`` column names each file
relative to ``features``, ``group`` (patient) keeps a patient's slides in one split."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domainfm.commands.common import apply_data_limits, output_dir, write_config
from domainfm.commands.labeled import (
    as_list,
    backbone_names,
    backbone_sources,
    extract,
    labeled_data,
    open_backbone,
)
from domainfm.errors import ConfigError, DataError
from domainfm.evaluation.abmil import bags_by_split, read_bag_files
from domainfm.evaluation.datasets import ImageList, LabeledSet
from domainfm.evaluation.features import Preprocess, fingerprint
from domainfm.evaluation.protocols import abmil_on_bags, check_protocols, run_protocols
from domainfm.evaluation.report import plot_embedding, plot_result, render_summary, write_results
from domainfm.evaluation.zeroshot import zeroshot_results
from domainfm.plugins import kind_hook
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")


def run(cfg: DictConfig) -> dict[str, Any]:
    apply_data_limits(cfg)
    hook = kind_hook(cfg, "evaluate")  # a domain's data kind: that domain evaluates it
    if hook is not None:
        return hook(cfg)
    out = output_dir(cfg)
    protocols = check_protocols(as_list(cfg.protocol))
    if cfg.get("features"):
        return run_on_bag_files(cfg, out, protocols)
    if "retrieval" in protocols:
        return run_retrieval(cfg, out, protocols)
    write_config(cfg, out)
    data = labeled_data(cfg, out)

    def images(source: str):
        model, preprocess, channels = open_backbone(source, cfg, data)
        return model, preprocess, ImageList.of(data, channels, preprocess.view())

    return evaluate_backbones(cfg, out, protocols, data, images)


def evaluate_backbones(
    cfg: DictConfig,
    out: Path,
    protocols: list[str],
    data: LabeledSet,
    open_data: Callable[[str], tuple[nn.Module, Preprocess, Dataset]],
    what: str = "images",
) -> dict[str, Any]:
    """The protocols for every backbone of ``cfg.backbone`` on ``data`` (with splits), one side-by-side table.
    ``open_data(source)`` gives the backbone, its preprocessing and a dataset whose items align with ``data``
    (a domain's evaluate hook passes its own: chips, volumes, ...); a dataset's ``fingerprint_extra`` (JSON) joins
    the cache fingerprint when more than the backbone's preprocessing decides its input."""
    sources = backbone_sources(cfg)
    settings = OmegaConf.to_container(cfg, resolve=True)
    names = backbone_names(sources)
    results, backbones = {}, {}
    for source in sources:
        name = names[source]
        model, preprocess, dataset = open_data(source)
        features = extract(
            cfg,
            model,
            dataset,
            out / name / "features.h5" if cfg.cache_features else None,
            pooling="both",
            overwrite=True,
            desc=f"extract {name}",
            backbone=source,
            classes=json.dumps(data.classes),
            fingerprint=fingerprint(model, preprocess, getattr(dataset, "fingerprint_extra", None)),
        )
        trained = [p for p in protocols if p != "zeroshot"]
        results[name] = run_protocols(features, data, trained, settings, out / name) if trained else []
        if "zeroshot" in protocols:
            results[name] += zeroshot_results(source, features, data, settings)
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
    notes = [f"Data: {data.source} ({len(data)} {what}, {len(data.classes)} classes, split sizes {counts})."]
    summary = render_summary(results, "domainfm evaluate", notes)
    info = {"data": data.source, "classes": data.classes, "splits": counts, "backbones": backbones, "config": settings}
    write_results(out, results, info, summary)
    print(summary, flush=True)
    print(f"results: {out / 'results.json'}, {out / 'summary.md'}, splits: {out / 'splits.csv'}")
    return {name: [r.to_dict() for r in rs] for name, rs in results.items()}


def run_on_bag_files(cfg: DictConfig, out: Path, protocols: list[str]) -> dict[str, Any]:
    """ABMIL on per-slide feature files listed in ``data.csv`` (``path`` relative to ``features``)."""
    if protocols != ["abmil"]:
        raise ConfigError(f"features={cfg.features} holds one bag per slide: run it with protocol=abmil")
    if not cfg.data.get("csv"):
        raise ConfigError("features= needs data.csv=<csv with path,label[,split][,group]>, one row per slide file")
    if cfg.data.get("root"):
        raise ConfigError("with features=, data.csv paths are relative to the features folder: drop data.root")
    cfg.data.root = cfg.features
    write_config(cfg, out)
    data = labeled_data(cfg, out)
    bags, skipped = read_bag_files(list(data.paths))
    keep = [i for i, b in enumerate(bags) if b is not None]
    if skipped:
        log.warning("%d of %d bag files skipped: %s", len(skipped), len(bags), "; ".join(skipped))
    if not keep:
        raise DataError(f"features={cfg.features}: none of the {len(bags)} files listed in {cfg.data.csv} is readable")
    names = [data.ids[i] for i in keep]
    by_split = bags_by_split(names, [bags[i] for i in keep], data.labels[keep], data.splits[keep])
    settings = OmegaConf.to_container(cfg, resolve=True)
    boot = {"n_boot": int(cfg.metrics.bootstrap), "seed": int(cfg.metrics.seed)}
    result = abmil_on_bags(by_split, data.classes, settings, out / "abmil", boot, data.source)
    if cfg.report.plots:
        plot_result(result, out / "abmil", "abmil")
    _write_predictions(out / "predictions.csv", by_split["test"][0], result)
    counts = {s: len(b[0]) for s, b in by_split.items()}
    dim = by_split["train"][1][0].shape[1]
    notes = [f"Bags: {cfg.features} ({len(keep)} slides, {dim}-d features, {len(data.classes)} classes, {counts})."]
    if skipped:
        notes.append(f"Skipped {len(skipped)} unreadable bag files: " + "; ".join(skipped))
    name = Path(str(cfg.features)).name
    summary = render_summary({name: [result]}, "domainfm evaluate (slide features)", notes)
    info = {"features": str(cfg.features), "classes": data.classes, "splits": counts, "skipped_files": skipped}
    write_results(out, {name: [result]}, {**info, "config": settings}, summary)
    print(summary, flush=True)
    print(f"results: {out / 'results.json'}, {out / 'summary.md'}, predictions: {out / 'predictions.csv'}")
    return {name: [result.to_dict()]}


def _write_predictions(path: Path, names: list[str], result) -> None:
    """One row per test bag: its file, true label and class probabilities."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "predicted", *[f"p_{c}" for c in result.classes]])
        for name, y, p in zip(names, result.y_true, result.probs):
            writer.writerow([name, result.classes[y], result.classes[int(p.argmax())], *[f"{v:.6f}" for v in p]])


def run_retrieval(cfg: DictConfig, out: Path, protocols: list[str]) -> dict[str, Any]:
    """Cross-modal retrieval for every CLIP export in ``backbone`` on ``data.captions`` (see the module docstring);
    ``retrieval.languages`` restricts the captions; each language also gets its own rows."""
    import numpy as np
    import torch
    from domainfm.data.captions import read_captions
    from domainfm.evaluation.features import check_channels, load_eval_backbone
    from domainfm.evaluation.zeroshot import render_retrieval, retrieval_scores
    from domainfm.methods.clip import load_clip_text

    if protocols != ["retrieval"]:
        raise ConfigError("protocol=retrieval runs on image-caption pairs alone: give it without other protocols")
    if not cfg.data.get("captions") or not cfg.data.get("root"):
        raise ConfigError("protocol=retrieval needs data.root=<image folder> and data.captions=<COCO json or CSV>")
    write_config(cfg, out)
    captions = read_captions(cfg.data.captions, cfg.data.root)
    languages = cfg.get("retrieval", {}).get("languages")
    if languages:
        captions = [c for c in captions if c.language in set(languages)]
    if not captions:
        raise DataError(f"{cfg.data.captions}: no captions (languages={languages})")
    paths = list(dict.fromkeys(c.path for c in captions))
    row = {p: i for i, p in enumerate(paths)}
    ks = [int(k) for k in cfg.get("retrieval", {}).get("ks", [1, 5, 10])]
    boot = dict(n_boot=int(cfg.metrics.bootstrap), seed=int(cfg.metrics.seed))
    table: dict[str, dict[str, Any]] = {}
    for source, name in backbone_names(backbone_sources(cfg)).items():
        try:
            clip_text = load_clip_text(source)
        except ValueError as e:
            raise DataError(f"protocol=retrieval: {e}") from None
        model, preprocess = load_eval_backbone(source, arch=cfg.get("arch"))
        channels = check_channels(paths, preprocess.in_chans, source, cfg.data.get("channels"))
        features = extract(cfg, model, ImageList(paths, channels=channels, view=preprocess.view()), None, "cls", True)
        if not features.valid.all():
            bad = [str(paths[i]) for i in np.flatnonzero(~features.valid)]
            raise DataError(f"{len(bad)} images of {cfg.data.captions} are unreadable: {', '.join(bad[:5])}")
        images = clip_text.project_images(torch.from_numpy(np.asarray(features.pooled("cls"))))
        sim = (images @ clip_text.encode_texts([c.text for c in captions]).t()).cpu().numpy()  # texts encoded once
        caption_image = np.array([row[c.path] for c in captions])
        languages_of = np.array([c.language for c in captions])
        langs = sorted({c.language for c in captions})
        groups = {name: np.arange(len(captions))}
        if len(langs) > 1:
            groups |= {f"{name} [{lang}]": np.flatnonzero(languages_of == lang) for lang in langs}
        for key, cols in groups.items():
            table[key] = retrieval_scores(sim[:, cols], caption_image[cols], ks, **boot)
    notes = f"Data: {cfg.data.captions} ({len(paths)} images, {len(captions)} captions, languages {langs})."
    summary = "# domainfm evaluate: retrieval\n\n" + render_retrieval(table, ks) + "\n\n" + notes + "\n"
    (out / "results.json").write_text(json.dumps({"retrieval": table, "data": str(cfg.data.captions)}, indent=2))
    (out / "summary.md").write_text(summary)
    print(summary, flush=True)
    print(f"results: {out / 'results.json'}, {out / 'summary.md'}")
    return table

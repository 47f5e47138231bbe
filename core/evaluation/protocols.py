"""The frozen-backbone protocols of ``domainfm evaluate`` on extracted features: ``knn``, ``linear`` (logistic
probe + DINOv2 grid of SGD heads), ``svm`` (linear SVM, the point-cloud protocol), ``fewshot`` (SimpleShot),
``fewshot_lr`` (few-shot logistic regression over folds, MADELEINE's slide protocol), ``retrieval_map`` (cosine
retrieval mAP@k) and ``abmil`` (bags = groups)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from domainfm.engine.runtime import resolve_device
from domainfm.errors import ConfigError, DataError
from domainfm.evaluation.abmil import bags_from_groups, train_abmil
from domainfm.evaluation.datasets import LabeledSet
from domainfm.evaluation.features import Features
from domainfm.evaluation.fewshot import fewshot
from domainfm.evaluation.fewshot_linear import fewshot_logistic, retrieval_map
from domainfm.evaluation.knn import knn_predict
from domainfm.evaluation.linear import head_name, linear_grid, logistic_probe, svm_probe
from domainfm.evaluation.results import ProtocolResult

PROTOCOLS = ("knn", "linear", "svm", "fewshot", "fewshot_lr", "retrieval_map", "abmil", "zeroshot", "retrieval")
# zeroshot and retrieval: CLIP exports


def check_protocols(names: list[str]) -> list[str]:
    """Expand ``all`` and reject unknown names."""
    out = []
    for name in names:
        if name == "all":
            out += ["knn", "linear", "fewshot"]
        elif name in PROTOCOLS:
            out.append(name)
        else:
            raise ConfigError(f"protocol={name!r} is unknown; choose from {', '.join(PROTOCOLS)} or all")
    return list(dict.fromkeys(out))


def run_protocols(
    features: Features, data: LabeledSet, protocols: list[str], cfg: Mapping[str, Any], out_dir: str | Path
) -> list[ProtocolResult]:
    """Every protocol on ``features`` (rows aligned with ``data``, which has splits). ``cfg`` holds the
    ``knn``, ``linear``, ``fewshot``, ``abmil``, ``metrics`` sections and ``pooling``, ``seed``, ``device``,
    ``progress``; protocol runs that train write under ``out_dir``."""
    out_dir = Path(out_dir)
    valid = features.valid if features.valid is not None else np.ones(len(features.labels), dtype=bool)
    split = {s: np.flatnonzero((data.splits == s) & valid) for s in ("train", "val", "test")}
    for s, rows in split.items():
        if len(rows) == 0:
            raise DataError(f"{data.source}: the {s} split is empty; give more data or a split column")
    x, y = features.pooled(cfg["pooling"]), data.labels
    k = len(data.classes)
    boot = {"n_boot": int(cfg["metrics"]["bootstrap"]), "seed": int(cfg["metrics"]["seed"])}
    tr, va, te = split["train"], split["val"], split["test"]
    results: list[ProtocolResult] = []

    def add(name: str, rows: np.ndarray, probs: np.ndarray, details: dict[str, Any]) -> None:
        results.append(ProtocolResult.from_predictions(name, data.classes, y[rows], probs, details=details, **boot))

    for protocol in protocols:
        if protocol == "knn":
            c = cfg["knn"]
            probs = knn_predict(x[tr], y[tr], x[te], k, k=int(c["k"]), temperature=float(c["temperature"]))
            add("knn", te, probs, {"selected": f"k={c['k']} T={c['temperature']}", "pooling": cfg["pooling"]})
        elif protocol == "linear":
            c = cfg["linear"]
            model, info = logistic_probe(
                (x[tr], y[tr]),
                (x[va], y[va]),
                k,
                Cs=list(c["Cs"]),
                max_iter=int(c["max_iter"]),
                device=str(resolve_device(cfg["device"])),
                solver=c["solver"],
            )
            add("logreg", te, model.predict_proba(x[te]), {"selected": f"C={info['C']:g}", **info})
            if c["grid"]:
                heads, best, info = linear_grid(
                    features,
                    tr,
                    va,
                    k,
                    out_dir / "linear_grid",
                    lrs=list(c["lrs"]),
                    steps=int(c["grid_steps"]),
                    batch_size=int(c["grid_batch_size"]),
                    seed=int(cfg["seed"]),
                    device=cfg["device"],
                    progress=bool(cfg["progress"]),
                    labels=y,
                )
                probs = heads.predict_proba(features.pooled("both")[te])[best]
                add("linear grid", te, probs, {"selected": head_name(*heads.keys[best]), **info})
        elif protocol == "svm":
            c = cfg["svm"]
            model, info = svm_probe((x[tr], y[tr]), (x[va], y[va]), k, Cs=list(c["Cs"]), max_iter=int(c["max_iter"]))
            add("svm", te, model.predict_proba(x[te]), {"selected": f"C={info['C']:g}", **info})
        elif protocol == "fewshot":
            c = cfg["fewshot"]
            per_k, skipped = fewshot(
                x[tr], y[tr], x[te], y[te], list(c["shots"]), int(c["episodes"]), c["n_way"], int(cfg["seed"])
            )
            for shots, values in per_k.items():
                details = {"selected": f"{c['episodes']} episodes", "queries": len(te), "shots": shots}
                results.append(ProtocolResult(f"fewshot {shots}-shot", data.classes, episodes=values, details=details))
            if skipped and per_k:
                results[-1].details["selected"] += f"; K={','.join(map(str, skipped))} left out (too few train samples)"
            elif skipped:
                raise DataError(f"{data.source}: too few training samples per class for K={skipped}")
        elif protocol == "fewshot_lr":
            c = cfg["fewshot_lr"]
            per_k, skipped = fewshot_logistic(
                x[tr], y[tr], x[te], y[te], k, list(c["shots"]), int(c["folds"]), float(c["C"]), int(c["max_iter"])
            )
            if not per_k:
                raise DataError(f"{data.source}: too few training samples per class for k={skipped}")
            for shots, values in per_k.items():
                details = {"selected": f"{c['folds']} folds, C={c['C']}", "queries": len(te), "shots": shots}
                results.append(
                    ProtocolResult(f"fewshot_lr {shots}-shot", data.classes, episodes=values, details=details)
                )
            if skipped:
                results[-1].details["selected"] += f"; k={','.join(map(str, skipped))} left out (too few train samples)"
        elif protocol == "retrieval_map":
            db = np.concatenate([tr, va])
            for top, v in retrieval_map(x[db], y[db], x[te], y[te], list(cfg["retrieval_map"]["ks"])).items():
                note = f"mAP@{top} {v['map'][0]:.3f} ± {v['map'][1]:.3f}; accuracy = majority of the top {top} (mMV)"
                details = {"selected": f"{note}; {len(db)} train+val searched", "queries": len(te), "map": v["map"]}
                results.append(
                    ProtocolResult(f"retrieval {top}", data.classes, episodes={"accuracy": v["mmv"]}, details=details)
                )
        elif protocol == "abmil":
            results.append(_abmil(x, data, valid, cfg, out_dir / "abmil", boot))
    return results


def _abmil(
    x: np.ndarray, data: LabeledSet, valid: np.ndarray, cfg: Mapping[str, Any], run_dir: Path, boot: dict
) -> ProtocolResult:
    if data.groups is None:
        raise ConfigError(
            f"protocol=abmil needs bags: add a group column (slide / patient / volume id) to {data.source}"
        )
    bags = bags_from_groups(x[valid], data.labels[valid], data.groups[valid], data.splits[valid])
    return abmil_on_bags(bags, data.classes, cfg, run_dir, boot, data.source)


def abmil_on_bags(
    bags: Mapping[str, tuple[list[str], list[np.ndarray], np.ndarray]],
    classes: list[str],
    cfg: Mapping[str, Any],
    run_dir: Path,
    boot: dict,
    source: str,
) -> ProtocolResult:
    """Train ABMIL on the ``train`` bags, select on ``val``, test on ``test`` (``{split: (names, bags, labels)}``)."""
    for s in ("train", "val", "test"):
        if s not in bags:
            raise DataError(f"{source}: no bag in the {s} split")
    model, info = train_abmil(
        bags["train"][1:],
        bags["val"][1:],
        len(classes),
        run_dir,
        seed=int(cfg["seed"]),
        device=cfg["device"],
        progress=bool(cfg["progress"]),
        **dict(cfg["abmil"]),
    )
    _, test_bags, test_y = bags["test"]
    probs, _ = model.predict(test_bags)
    details = {"selected": f"step {info['best_step']}", "bags": {s: len(b[0]) for s, b in bags.items()}, **info}
    return ProtocolResult.from_predictions("abmil", classes, test_y, probs, details=details, **boot)

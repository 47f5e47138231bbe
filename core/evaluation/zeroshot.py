"""Zero-shot classification and cross-modal retrieval with an exported CLIP run (image backbone + ``text_tower/``).

Zero-shot (Radford et al. 2021; open_clip ``zero_shot_classifier``): for each class, every template of every
language is filled with the class name in that language, encoded and L2-normalised; the class embedding is the mean
of those, renormalised (prompt ensembling). ``p(c | x) = softmax(100 * <f(x), w_c>)`` with ``f(x)`` the normalised
image embedding. The protocol ``zeroshot`` ensembles over all languages of the prompts; ``zeroshot[<lang>]`` uses
one language's prompts only.

Prompts file (JSON or YAML)::

    templates: {en: ["a satellite image of {}."], pt: ["uma imagem de satélite de {}."]}
    classes: {AnnualCrop: {en: "annual crops", pt: "culturas anuais"}, ...}

Without one: the English templates below and the class names with ``_`` / CamelCase split into words.

Retrieval (the RSICD/RSITMD protocol): image -> text is a hit at ``k`` when any caption of the image is among the
``k`` most similar texts; text -> image when the caption's own image is among the ``k`` most similar images.
``mean recall`` = the mean of R@1/5/10 in both directions; 95 % CIs by bootstrap over the queries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.errors import DataError

DEFAULT_TEMPLATES = {"en": ["a satellite image of {}.", "an aerial photo of {}.", "a photo of {}."]}


def read_prompts(
    path: str | Path | None, classes: Sequence[str]
) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """``(templates per language, class name per language per class)``; every class of ``classes`` must have a
    name in every language of the templates (an error names what is missing)."""
    if path is None:
        words = {c: re.sub(r"(?<=[a-z])(?=[A-Z])", " ", c).replace("_", " ").lower() for c in classes}
        return DEFAULT_TEMPLATES, {c: {"en": words[c]} for c in classes}
    path = Path(path)
    if not path.exists():
        raise DataError(f"zeroshot.prompts={path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        from omegaconf import OmegaConf

        doc = OmegaConf.to_container(OmegaConf.create(text))
    else:
        doc = json.loads(text)
    templates, names = doc.get("templates"), doc.get("classes")
    if not isinstance(templates, dict) or not isinstance(names, dict):
        raise DataError(f"{path}: needs 'templates' {{language: [..]}} and 'classes' {{class: {{language: name}}}}")
    for c in classes:
        if c not in names:
            raise DataError(f"{path}: class {c!r} of the data has no names (classes there: {sorted(names)})")
        lacking = [lang for lang in templates if lang not in names[c]]
        if lacking:
            raise DataError(f"{path}: class {c!r} has no name in {lacking}")
    return {k: list(v) for k, v in templates.items()}, {c: dict(names[c]) for c in classes}


@torch.no_grad()
def class_embeddings(
    clip_text, classes: Sequence[str], templates: dict[str, list[str]], names: dict[str, dict[str, str]]
) -> torch.Tensor:
    """``(K, E)`` normalised prompt-ensemble embeddings, one row per class (see the module docstring)."""
    rows = []
    for c in classes:
        prompts = [t.format(names[c][lang]) for lang, ts in templates.items() for t in ts]
        rows.append(torch.nn.functional.normalize(clip_text.encode_texts(prompts).mean(0), dim=-1))
    return torch.stack(rows)


def zeroshot_probs(image_embeddings: torch.Tensor, weights: torch.Tensor, scale: float = 100.0) -> np.ndarray:
    return torch.softmax(scale * image_embeddings.float() @ weights.float().t(), dim=-1).cpu().numpy()


def retrieval_scores(
    similarity: np.ndarray, caption_image: np.ndarray, ks: Sequence[int] = (1, 5, 10), n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """R@k both ways and mean recall from ``similarity`` ``(n_images, n_texts)``; ``caption_image[j]`` is the image
    row of text ``j``. Values in %, each with a bootstrap 95 % CI over its queries."""
    n_img, n_txt = similarity.shape
    own = np.zeros_like(similarity, dtype=bool)
    own[caption_image, np.arange(n_txt)] = True
    # rank of the best own caption per image, of the own image per caption (0 = first)
    order_i2t = np.argsort(-similarity, axis=1, kind="stable")
    rank_i2t = np.argmax(np.take_along_axis(own, order_i2t, axis=1), axis=1)
    order_t2i = np.argsort(-similarity.T, axis=1, kind="stable")
    rank_t2i = np.argmax(order_t2i == caption_image[:, None], axis=1)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"n_images": int(n_img), "n_texts": int(n_txt)}
    hits_all = []
    for direction, ranks in (("i2t", rank_i2t), ("t2i", rank_t2i)):
        boots = rng.integers(0, len(ranks), size=(n_boot, len(ranks)))
        for k in ks:
            hit = (ranks < k).astype(np.float64)
            hits_all.append(hit.mean())
            ci = np.percentile(hit[boots].mean(axis=1), [2.5, 97.5]) * 100 if n_boot else [None, None]
            out[f"{direction}_R@{k}"] = {"value": float(hit.mean() * 100), "ci": [float(v) for v in ci]}
    out["mean_recall"] = float(np.mean(hits_all) * 100)
    return out


def render_retrieval(results: dict[str, dict[str, Any]], ks: Sequence[int]) -> str:
    """A markdown table, one row per backbone (and language), R@k both ways and mean recall."""
    keys = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in ks]
    lines = ["| backbone | texts | " + " | ".join(keys) + " | mean recall |", "|---" * (len(keys) + 3) + "|"]
    for name, r in results.items():
        cells = [f"{r[k]['value']:.1f} [{r[k]['ci'][0]:.1f}, {r[k]['ci'][1]:.1f}]" for k in keys]
        lines.append(f"| {name} | {r['n_texts']} | " + " | ".join(cells) + f" | {r['mean_recall']:.1f} |")
    return "\n".join(lines)


def zeroshot_results(source: str, features, data, cfg: dict[str, Any]) -> list:
    """``zeroshot`` (all languages of the prompts) and ``zeroshot[<lang>]`` results on the ``zeroshot.split`` rows
    (``test``, or ``all``: no training is involved) of ``data``, from the backbone's extracted class tokens."""
    from domainfm.evaluation.results import ProtocolResult
    from domainfm.methods.clip import load_clip_text

    try:
        clip_text = load_clip_text(source)
    except ValueError as e:
        raise DataError(f"protocol=zeroshot: {e}") from None
    zcfg = cfg.get("zeroshot") or {}
    templates, names = read_prompts(zcfg.get("prompts"), data.classes)
    valid = features.valid if features.valid is not None else np.ones(len(data.labels), dtype=bool)
    split = zcfg.get("split", "test")
    rows = np.flatnonzero(valid & ((data.splits == split) if split != "all" else True))
    if len(rows) == 0:
        raise DataError(f"{data.source}: no image in zeroshot.split={split}")
    images = clip_text.project_images(torch.from_numpy(np.asarray(features.pooled("cls")[rows])))
    boot = {"n_boot": int(cfg["metrics"]["bootstrap"]), "seed": int(cfg["metrics"]["seed"])}
    langs = list(templates)
    variants = [("zeroshot", templates)] + (
        [(f"zeroshot[{x}]", {x: templates[x]}) for x in langs] if len(langs) > 1 else []
    )
    results = []
    for protocol, temps in variants:
        weights = class_embeddings(clip_text, data.classes, temps, names)
        probs = zeroshot_probs(images, weights)
        details = {"languages": list(temps), "templates": sum(len(t) for t in temps.values()), "split": split}
        results.append(
            ProtocolResult.from_predictions(protocol, data.classes, data.labels[rows], probs, details=details, **boot)
        )
    return results

"""Readable outputs: markdown tables (printed and written), ``results.json`` and plots (confusion matrix, ROC
curves, 2D embedding map coloured by label)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from domainfm.evaluation.metrics import LABELS, METRICS
from domainfm.evaluation.results import ProtocolResult

SIDE_BY_SIDE = ("balanced_accuracy", "auroc")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def format_value(value: float | None, ci: Sequence[float | None] | None = None) -> str:
    """``0.812 [0.780, 0.843]``; ``-`` when undefined."""
    if value is None:
        return "-"
    if ci is None or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def cell(result: ProtocolResult, metric: str) -> str:
    """One metric of one result: value with CI, or ``mean ± std`` over few-shot episodes."""
    if result.episodes is not None:
        mean_std = result.episodes.get(metric)
        return "-" if mean_std is None else f"{mean_std[0]:.3f} ± {mean_std[1]:.3f}"
    if result.scores is None:
        return "-"
    return format_value(result.scores["metrics"].get(metric), result.scores["ci"].get(metric))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table padded into aligned columns (readable as plain text too)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def detail_table(results: Sequence[ProtocolResult], metrics: Sequence[str] = METRICS) -> str:
    """Every metric of every protocol of one backbone (test split, 95% bootstrap CI in brackets)."""
    header = ["protocol", "n", *[LABELS[m] for m in metrics], "selected on val / notes"]
    rows = []
    for r in results:
        n = str(r.scores["n"]) if r.scores else str(r.details.get("queries", "-"))
        rows.append([r.protocol, n, *[cell(r, m) for m in metrics], str(r.details.get("selected", ""))])
    return markdown_table(header, rows)


def comparison_table(results: dict[str, Sequence[ProtocolResult]], metrics: Sequence[str] = SIDE_BY_SIDE) -> str:
    """Backbones side by side: one row per protocol, one column per (backbone, metric)."""
    protocols = list(dict.fromkeys(r.protocol for rs in results.values() for r in rs))
    header = ["protocol", *[f"{name} {LABELS[m]}" for name in results for m in metrics]]
    rows = []
    for p in protocols:
        row = [p]
        for rs in results.values():
            found = next((r for r in rs if r.protocol == p), None)
            row += [cell(found, m) if found else "-" for m in metrics]
        rows.append(row)
    return markdown_table(header, rows)


def render_summary(results: dict[str, Sequence[ProtocolResult]], title: str, notes: Sequence[str] = ()) -> str:
    """The markdown summary: a side-by-side table when there are several backbones, then one table each."""
    parts = [f"# {title}", ""]
    parts += [*notes, ""] if notes else []
    parts.append("Test split; value [95% bootstrap CI]; few-shot rows: mean ± std over episodes.")
    if len(results) > 1:
        parts += ["", "## Side by side", "", comparison_table(results)]
    for name, rs in results.items():
        parts += ["", f"## {name}", "", detail_table(rs)]
    return "\n".join(parts) + "\n"


def write_results(
    out_dir: str | Path, results: dict[str, Sequence[ProtocolResult]], info: dict[str, Any], summary: str
) -> tuple[Path, Path]:
    """``results.json`` (``info`` + every result) and ``summary.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**info, "results": {name: [r.to_dict() for r in rs] for name, rs in results.items()}}
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(payload, indent=2, default=_jsonable))
    md_path = out_dir / "summary.md"
    md_path.write_text(summary)
    return json_path, md_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix (rows: true, columns: predicted) with counts, coloured by row-normalised share."""
    plt = _plt()
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(3.5, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=120)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """ROC curve (binary: positive class; otherwise one-vs-rest per class with positives and negatives)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    targets = [1] if len(classes) == 2 else range(len(classes))
    for c in targets:
        positive = np.asarray(y_true) == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        ax.plot(fpr, tpr, label=f"{classes[c]} (AUC {roc_auc_score(positive, probs[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def embed_2d(x: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2D map of ``x``: t-SNE (after PCA to 50 dimensions) or PCA."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    if method == "pca" or len(x) < 5:
        return PCA(2, random_state=seed).fit_transform(x) if len(x) > 2 else np.zeros((len(x), 2))
    from sklearn.manifold import TSNE

    reduced = PCA(min(50, *x.shape), random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def plot_embedding(
    x: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    title: str = "",
    method: str = "tsne",
    max_points: int = 1000,
    seed: int = 0,
) -> Path:
    """Scatter of a 2D embedding (``embed_2d``) of at most ``max_points`` samples, coloured by label."""
    plt = _plt()
    keep = np.arange(len(x))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_points, replace=False))
    xy = embed_2d(x[keep], method, seed)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c, name in enumerate(classes):
        sel = labels[keep] == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=cmap(c % cmap.N), label=name, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title} ({method}, {len(keep)} samples)")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def plot_result(result: ProtocolResult, folder: str | Path, title: str) -> list[Path]:
    """Confusion matrix and ROC curves of one result into ``folder`` (nothing for few-shot rows)."""
    if result.scores is None or result.probs is None:
        return []
    folder = Path(folder)
    return [
        plot_confusion(result.scores["confusion_matrix"], result.classes, folder / "confusion.png", title),
        plot_roc(result.y_true, result.probs, result.classes, folder / "roc.png", title),
    ]

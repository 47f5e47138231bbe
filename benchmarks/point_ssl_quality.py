"""Does a point-cloud SSL method learn? A pretrained point encoder vs the same encoder at random initialisation
(same architecture, same seed: ``domainfm.commands.demo.random_init_export``) on real labeled shapes: the 1,356
ModelNet10 chairs and monitors of ``/work/shared/data/three_d`` (32^3 voxel grids, the surface voxels as points;
the empty grids are left out).

Protocol: a fixed, class-stratified split of the shapes (``--test``, ``--val``, ``--seed``; the package's
``grouped_stratified_split``) written as a ``path,label,split`` CSV of one ``.npy`` per shape in the workdir. Each
``--recipe`` is pretrained (``domainfm pretrain``) on the train + val shapes only, labels unused; then one
``domainfm evaluate data.points=<csv> protocol=[svm,knn] pooling=both`` for every pretrained encoder and its random
init: ModelNet's linear SVM on frozen ``[max | mean]`` token features (C chosen on val by balanced accuracy, fitted
on train, scored once on test) and kNN, with 95 % bootstrap CIs over the test shapes.

    .venv/bin/python benchmarks/point_ssl_quality.py --steps 1000        # ~ 20 min on 2 CPU cores
    .venv/bin/python benchmarks/point_ssl_quality.py --steps 20 --workdir .bench/point_ssl_quality_smoke

More rows: repeat ``--recipe``; an ``--override`` (extra Hydra override for pretrain) or ``--label`` (the row's
name) given after a ``--recipe`` belongs to it, one given before any ``--recipe`` to every recipe, e.g.
``--recipe three_d/point_mae_tiny --recipe three_d/<other> --override method.guide=<...> --label other``.

Writes a markdown table to stdout and ``<workdir>/results.json`` (default workdir ``.bench/point_ssl_quality``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/three_d")
CLASSES = ("chair", "monitor")
SPLITS = ("train", "val", "test")


@dataclass
class Row:
    """One pretraining run: its recipe, extra overrides and the name of its table row."""

    recipe: str
    overrides: list[str] = field(default_factory=list)
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.recipe.rsplit("/", 1)[-1]


class RowAction(argparse.Action):
    """``--recipe`` starts a row; ``--override`` / ``--label`` attach to the last row (before any: to every row)."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        rows, shared = namespace.rows, namespace.shared
        if self.dest == "recipe":
            rows.append(Row(value, list(shared)))
        elif self.dest == "override":
            (rows[-1].overrides if rows else shared).append(value)
        elif rows:
            rows[-1].label = value
        else:
            parser.error("--label names the --recipe it follows")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.set_defaults(rows=[], shared=[])
    p.add_argument("--recipe", action=RowAction, help="pretrain recipe (repeatable; default three_d/point_mae_tiny)")
    p.add_argument("--override", action=RowAction, help="extra Hydra override for pretrain (repeatable)")
    p.add_argument("--label", action=RowAction, help="table row name of the --recipe before it")
    p.add_argument("--steps", type=int, default=1000, help="pretraining steps per recipe")
    p.add_argument("--test", type=float, default=0.3, help="test fraction (approximate: 1 / round(1 / test) folds)")
    p.add_argument("--val", type=float, default=0.15, help="validation fraction (chooses the SVM's C)")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the test set for the CIs")
    p.add_argument("--data", type=Path, default=DATA, help="folder of modelnet10_vox32_<class>.npy.gz")
    p.add_argument("--workdir", type=Path, default=REPO / ".bench" / "point_ssl_quality")
    args = p.parse_args()
    if not args.rows:
        args.rows = [Row("three_d/point_mae_tiny", list(args.shared))]
    names = [r.name for r in args.rows]
    if len(set(names)) != len(names):
        p.error(f"row names repeat ({names}): give each --recipe its own --label")
    args.workdir = args.workdir.resolve()
    return args


def read_grids(data: Path) -> tuple[list[np.ndarray], np.ndarray, int]:
    """The non-empty ``32^3`` grids of every class, their labels and how many empty grids were left out."""
    grids, labels, empty = [], [], 0
    for label, name in enumerate(CLASSES):
        with gzip.open(data / f"modelnet10_vox32_{name}.npy.gz") as f:
            array = np.load(f)
        for grid in array.reshape(-1, *array.shape[-3:]):
            if (grid > 0.5).any():
                grids.append((grid > 0.5).astype(np.uint8))
                labels.append(label)
            else:
                empty += 1
    return grids, np.asarray(labels), empty


def write_shapes(grids: list[np.ndarray], labels: np.ndarray, splits: np.ndarray, root: Path) -> Path:
    """``root/{pretrain,test}/<class>/<i>.npy`` (one ``1 x 32^3`` grid each: a file of one shape) and
    ``root/labels.csv`` (``path,label,split``); returns the CSV."""
    rows = []
    for i, (grid, label, split) in enumerate(zip(grids, labels, splits)):
        rel = Path("test" if split == "test" else "pretrain") / CLASSES[label] / f"{i:04d}.npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, grid[None])
        rows.append((rel.as_posix(), CLASSES[label], split))
    path = root / "labels.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    return path


def prepare_data(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """The labeled CSV, the folder of pretraining shapes (train + val, no test) and a record of the split."""
    from domainfm.evaluation.datasets import grouped_stratified_split

    grids, labels, empty = read_grids(args.data)
    splits = grouped_stratified_split(labels, None, val=args.val, test=args.test, seed=args.seed)
    root = args.workdir / "shapes"
    csv_path = write_shapes(grids, labels, splits, root)
    counts = {s: {c: int(((splits == s) & (labels == k)).sum()) for k, c in enumerate(CLASSES)} for s in SPLITS}
    return csv_path, root / "pretrain", {"shapes": len(grids), "empty_left_out": empty, "splits": counts}


def pretrain_row(row: Row, shapes: Path, steps: int, run: Path) -> float:
    """``domainfm pretrain recipe=<row> data.root=<shapes>`` for ``steps``; returns the wall seconds."""
    from domainfm.cli import compose_config
    from domainfm.commands import pretrain

    overrides = [
        f"recipe={row.recipe}", f"data.root={shapes}", f"run_dir={run}", f"trainer.max_steps={steps}",
        f"trainer.checkpoint_every={steps}", "trainer.progress=false", *row.overrides,
    ]  # fmt: skip
    print("domainfm pretrain " + " ".join(overrides), flush=True)
    start = time.perf_counter()
    pretrain.run(compose_config("pretrain", overrides))
    return time.perf_counter() - start


def evaluate_all(csv_path: Path, backbones: list[Path], out: Path, bootstrap: int) -> dict[str, list[dict]]:
    """One ``domainfm evaluate`` of every backbone on the labeled CSV: linear SVM + kNN on ``[max | mean]``."""
    from domainfm.cli import compose_config
    from domainfm.commands import evaluate

    overrides = [
        f"data.points={csv_path}", f"backbone=[{','.join(map(str, backbones))}]", "protocol=[svm,knn]",
        "pooling=both", f"metrics.bootstrap={bootstrap}", f"run_dir={out}", "progress=false",
    ]  # fmt: skip
    print("domainfm evaluate " + " ".join(overrides), flush=True)
    return evaluate.run(compose_config("evaluate", overrides))


def cell(result: dict, metric: str) -> str:
    value, (low, high) = result["metrics"][metric], result["ci"][metric]
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def table(results: dict[str, list[dict]], names: dict[str, str], seconds: dict[str, float]) -> str:
    """Markdown: a row per backbone, SVM accuracy / balanced accuracy and kNN accuracy with 95 % CIs."""
    lines = [
        "| encoder | pretrain s | SVM accuracy [95 % CI] | SVM balanced acc. [CI] | kNN accuracy [CI] | SVM C |",
        "|---|---:|---|---|---|---|",
    ]
    for key, rows in results.items():
        svm, knn = (next(r for r in rows if r["protocol"] == p) for p in ("svm", "knn"))
        spent = f"{seconds[key]:.0f}" if key in seconds else "-"
        cells = [cell(svm, "accuracy"), cell(svm, "balanced_accuracy"), cell(knn, "accuracy")]
        lines.append(f"| {names[key]} | {spent} | " + " | ".join(cells) + f" | {svm['details']['selected']} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    from domainfm.commands.demo import random_init_export, verdict
    from domainfm.commands.labeled import backbone_names

    start = time.perf_counter()
    csv_path, shapes, record = prepare_data(args)
    print(f"{record['shapes']} shapes ({record['empty_left_out']} empty left out), splits {record['splits']}")
    backbones, names, seconds = [], {}, {}
    for row in args.rows:
        run = args.workdir / "runs" / row.name
        spent = pretrain_row(row, shapes, args.steps, run)
        baseline = random_init_export(run, args.workdir / "runs" / f"{row.name}_random_init" / "export").parent
        backbones += [run, baseline]
        names.update({str(run): f"{row.name} ({args.steps} steps)", str(baseline): f"{row.name} random init"})
        seconds[str(run)] = spent
    keys = backbone_names([str(b) for b in backbones])  # evaluate's result keys
    results = evaluate_all(csv_path, backbones, args.workdir / "evaluate", args.bootstrap)
    by_key = {keys[s]: n for s, n in names.items()}
    spent_by_key = {keys[s]: t for s, t in seconds.items()}
    wall = time.perf_counter() - start
    print("\n" + table(results, by_key, spent_by_key))
    verdicts = []
    for row, run, baseline in zip(args.rows, backbones[::2], backbones[1::2]):
        trained, base = (next(r for r in results[keys[str(b)]] if r["protocol"] == "svm") for b in (run, baseline))
        verdicts.append(f"{row.name}: " + verdict(trained, base, metric="accuracy", label="linear SVM"))
    print("\n" + "\n".join(verdicts) + f"\n\nwall time {wall / 60:.1f} min (data + pretraining + evaluation)")
    record.update(
        steps=args.steps,
        rows=[vars(r) | {"name": r.name} for r in args.rows],
        seconds={"pretrain": spent_by_key, "wall": wall},
        verdicts=verdicts,
        results={
            by_key[k]: {r["protocol"]: {m: r[m] for m in ("metrics", "ci", "details")} for r in v}
            for k, v in results.items()
        },
    )
    (args.workdir / "results.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"results: {args.workdir / 'results.json'}, evaluate: {args.workdir / 'evaluate' / 'summary.md'}")


if __name__ == "__main__":
    main()

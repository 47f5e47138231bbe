"""Label efficiency on PneumoniaMNIST: linear probe (and kNN) on frozen features, and finetuning, with 1%, 10% and
100% of the training labels, from an SSL-pretrained ViT-Tiny and from random initialisation.

    .venv/bin/python benchmarks/label_efficiency.py [--backbone <run or export dir>] [--workdir runs/label_efficiency]

Everything goes through the CLI a user runs. The npz (28 x 28 grey chest X-rays, ../shared/data/medical) is written
as PNGs with a CSV ``path,label,split`` (the official train/val/test split); a label fraction keeps a stratified
subset of the training rows (seed 0) and every validation and test row. Without ``--backbone`` a ViT-Tiny/16 at
64 px (1 channel) is pretrained first with ``domainfm pretrain recipe=core/mae_vit_tiny`` on the training images
(labels unused). The random-initialisation baseline is the same architecture with fresh weights, exported with the
same preprocessing. Features are the mean of the patch tokens (MAE's global pooling; its class token is not
trained by the objective). Protocols: kNN (k=20) and the L-BFGS logistic probe (C chosen on val) on frozen
features; full finetuning (AdamW lr 1e-3, layer decay 0.75, batch 32, 150 steps, class-balanced sampling,
validation every 15 steps, early stop after 4 evaluations without gain, best-on-val checkpoint tested). Prints a
markdown table (balanced accuracy and AUROC with 95% bootstrap CIs on the test split) and writes it to
``<workdir>/label_efficiency.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NPZ = REPO.parent / "shared" / "data" / "medical" / "pneumoniamnist.npz"
CLASSES = ("normal", "pneumonia")


def write_pngs(npz: Path, root: Path) -> Path:
    """``root/<split>/<class>/<i>.png`` and ``root/labels.csv`` (path,label,split); skipped when present."""
    table = root / "labels.csv"
    if table.exists():
        return table
    data = np.load(npz)
    rows = []
    for split in ("train", "val", "test"):
        for i, (image, label) in enumerate(zip(data[f"{split}_images"], data[f"{split}_labels"][:, 0])):
            rel = Path(split) / CLASSES[label] / f"{i:05d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / rel)
            rows.append((rel.as_posix(), CLASSES[label], split))
    with table.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    return table


def subset(table: Path, fraction: float, out: Path, seed: int = 0) -> tuple[Path, int]:
    """A CSV with a stratified ``fraction`` of the training rows and all validation and test rows."""
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    keep = []
    for label in CLASSES:
        train = [r for r in rows if r["split"] == "train" and r["label"] == label]
        n = max(1, round(len(train) * fraction))
        keep += [train[i] for i in sorted(rng.choice(len(train), n, replace=False))]
    keep += [r for r in rows if r["split"] != "train"]
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(keep)
    return out, sum(r["split"] == "train" for r in keep)


ENV: dict[str, str] = {}


def cli(args: list[str], log: Path) -> None:
    """``python -m domainfm <args>``, output to ``log``; stops with the log's tail on failure."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        command = [sys.executable, "-m", "domainfm", *args]
        done = subprocess.run(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    print(f"  {args[0]:<9} {time.perf_counter() - t0:6.0f} s  ({log})", flush=True)
    if done.returncode:
        sys.exit(f"{' '.join(args[:2])} failed:\n" + "\n".join(log.read_text().splitlines()[-20:]))


def pretrain(
    images: Path, run: Path, steps: int, mean: float, std: float, recipe: str = "core/mae_vit_tiny", extra=()
) -> Path:
    """``recipe`` on ``images`` as a ViT-Tiny/16 at 64 px, 1 channel, batch 64 (skipped when exported already)."""
    if not (run / "export" / "config.json").exists():
        cli(
            [
                "pretrain",
                f"recipe={recipe}",
                f"data.root={images}",
                f"run_dir={run}",
                "preprocess.in_chans=1",
                "preprocess.img_size=64",
                f"preprocess.mean=[{mean:.4f}]",
                f"preprocess.std=[{std:.4f}]",
                "backbone.patch_size=16",
                "data.batch_size=64",
                f"trainer.max_steps={steps}",
                f"trainer.checkpoint_every={steps}",
                "trainer.progress=false",
                *extra,
            ],
            run.parent / f"pretrain_{run.name}.log",
        )
    return run / "export"


def random_init(ssl_export: Path, out: Path, seed: int = 0) -> Path:
    """The SSL backbone's architecture with fresh timm initialisation and the same preprocessing."""
    import timm
    import torch
    from domainfm.engine.export import export_backbone

    config = json.loads((ssl_export / "config.json").read_text())
    torch.manual_seed(seed)
    model = timm.create_model(config["architecture"], pretrained=False, **config["model_args"])
    pre = config["pretrained_cfg"]
    chans, h, w = pre["input_size"]
    return export_backbone(model, out, {"in_chans": chans, "img_size": [h, w], "mean": pre["mean"], "std": pre["std"]})


def rows_of(results: Path, fraction: float, n_train: int) -> list[dict]:
    payload = json.loads(results.read_text())
    out = []
    for name, results in payload["results"].items():
        for r in results:
            out.append({"init": name, "protocol": r["protocol"], "fraction": fraction, "n_train": n_train, **r})
    return out


def cell(row: dict, metric: str) -> str:
    value, (low, high) = row["metrics"][metric], row["ci"][metric]
    return "-" if value is None else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def label_fraction_runs(
    work: Path, backbones: str, csv_path: Path, tag: str, fraction: float, n_train: int, finetune_steps: int,
    bootstrap: int = 1000, grid: bool = False,
) -> list[dict]:  # fmt: skip
    """``domainfm evaluate`` (kNN, logistic probe on mean-pooled features) and ``domainfm finetune`` of
    ``backbones`` on one label fraction; the table rows of both."""
    data = [f"data.csv={csv_path}", f"data.root={work / 'images'}", f"metrics.bootstrap={bootstrap}",
            "report.embedding=pca"]  # fmt: skip
    cli(
        [
            "evaluate",
            backbones,
            *data,
            f"run_dir={work / ('evaluate_' + tag)}",
            "protocol=[knn,linear]",
            "pooling=mean",
            f"linear.grid={str(grid).lower()}",
            "progress=false",
        ],
        work / f"evaluate_{tag}.log",
    )
    eval_every = max(10, finetune_steps // 10)
    cli(
        [
            "finetune",
            backbones,
            *data,
            f"run_dir={work / ('finetune_' + tag)}",
            "data.batch_size=32",
            f"trainer.max_steps={finetune_steps}",
            f"trainer.eval_every={eval_every}",
            f"trainer.checkpoint_every={finetune_steps}",
            "trainer.patience=4",
            "trainer.lr=1e-3",
            "finetune.balanced=true",
            "finetune.pooling=mean",
            "trainer.progress=false",
            "trainer.tensorboard=false",
        ],
        work / f"finetune_{tag}.log",
    )
    return rows_of(work / f"evaluate_{tag}" / "results.json", fraction, n_train) + rows_of(
        work / f"finetune_{tag}" / "results.json", fraction, n_train
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", type=Path, help="SSL run or export folder (default: pretrain one)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "label_efficiency")
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs (1 is faster on a busy machine)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--grid", action="store_true", help="also the DINOv2 grid of SGD linear heads")
    args = parser.parse_args()
    if args.threads:
        ENV["OMP_NUM_THREADS"] = str(args.threads)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table = write_pngs(NPZ, work / "images")
    train_images = np.load(NPZ)["train_images"] / 255.0
    mean, std = float(train_images.mean()), float(train_images.std())
    print(f"PneumoniaMNIST as PNGs: {table}  (train mean {mean:.3f}, std {std:.3f})", flush=True)
    ssl = (
        args.backbone.resolve()
        if args.backbone
        else pretrain(work / "images" / "train", work / "ssl", args.pretrain_steps, mean, std)
    )
    rand = random_init(ssl if (ssl / "config.json").exists() else ssl / "export", work / "random" / "export")
    backbones = f"backbone=[{ssl},{rand.parent}]"
    rows = []
    for fraction in args.fractions:
        tag = f"{fraction:g}"
        csv_path, n_train = subset(table, fraction, work / f"labels_{tag}.csv")
        print(f"{fraction:.0%} of the training labels: {n_train} images", flush=True)
        rows += label_fraction_runs(work, backbones, csv_path, tag, fraction, n_train, args.finetune_steps,
                                    args.bootstrap, args.grid)  # fmt: skip
    rows.sort(key=lambda r: (r["protocol"], r["init"] == "random", r["fraction"]))
    lines = [
        "| protocol | init | labels | train images | bal. acc [95% CI] | AUROC [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        init = "random" if r["init"] == "random" else "SSL (MAE)"
        lines.append(
            f"| {r['protocol']} | {init} | {r['fraction']:.0%} | {r['n_train']} | {cell(r, 'balanced_accuracy')} "
            f"| {cell(r, 'auroc')} |"
        )
    text = "\n".join(lines) + "\n"
    (work / "label_efficiency.md").write_text(text)
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s; table in {work / 'label_efficiency.md'}")


if __name__ == "__main__":
    main()

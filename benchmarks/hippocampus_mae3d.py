"""It must learn, 3D: `medical/mae3d_tiny` pretrained on the hippocampus MR volumes vs the same 3D ViT at random
initialisation, finetuned under UNETR (`domainfm finetune task=segmentation`) with 5 and with 20 labeled volumes;
Dice and HD95 per class (anterior, posterior) on 20 held-out test volumes with bootstrap CIs.

    .venv/bin/python benchmarks/hippocampus_mae3d.py --steps 2000 --finetune-steps 300   # ~35 min on 2 CPU cores
    .venv/bin/python benchmarks/hippocampus_mae3d.py --protocols frozen full   # + a frozen-encoder table
    .venv/bin/python benchmarks/hippocampus_mae3d.py --protocols frozen full --skip-norm   # LayerNorm on the skips

``frozen``: the ViT's blocks frozen (``finetune.train_blocks=0``, no drop path), only UNETR's decoder and the final
norm learn, so the Dice measures what the encoder's features carry; ``full``: the whole UNETR finetuned.

Splits (seed 0, every volume its own patient: the set has no patient ids): 20 test volumes, 5 validation volumes,
the labeled training volumes drawn from the other 35. Pretraining sees the 40 non-test volumes' images only (no
labels). Both inits get the same finetuning recipe, steps, crops and seeds. Writes ``<workdir>/hippocampus_mae3d.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_efficiency as le  # noqa: E402
from domainfm.commands.demo import random_init_export  # noqa: E402

HIPPO = le.REPO.parent / "shared" / "data" / "medical" / "msd_task04_hippocampus_subset"
CLASSES = "[background,anterior,posterior]"


def splits(work: Path, n_test: int = 20, n_val: int = 5, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    names = sorted(p.name for p in (HIPPO / "imagesTr").glob("*.nii.gz"))
    order = np.random.default_rng(seed).permutation(len(names))
    test = [names[i] for i in order[:n_test]]
    val = [names[i] for i in order[n_test : n_test + n_val]]
    pool = [names[i] for i in order[n_test + n_val :]]
    unlabeled = work / "pretrain_images"
    unlabeled.mkdir(parents=True, exist_ok=True)
    for n in val + pool:
        if not (unlabeled / n).exists():
            (unlabeled / n).symlink_to(HIPPO / "imagesTr" / n)
    return test, val, pool


def write_csv(path: Path, train: list[str], val: list[str], test: list[str]) -> Path:
    rows = ["image,label,split"]
    for split, names in (("train", train), ("val", val), ("test", test)):
        rows += [f"imagesTr/{n},labelsTr/{n},{split}" for n in names]
    path.write_text("\n".join(rows) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=le.REPO / ".bench" / "hippocampus_mae3d")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--labeled", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--protocols", nargs="+", default=["full"], choices=["full", "frozen"])
    parser.add_argument("--skip-norm", action="store_true", help="segmentation.skip_norm=true (LayerNorm on skips)")
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    test, val, pool = splits(work)
    run = work / "mae3d"
    if not (run / "export" / "config.json").exists():
        le.cli(["pretrain", "recipe=medical/mae3d_tiny", f"data.root={work / 'pretrain_images'}", f"run_dir={run}",
                f"trainer.max_steps={args.steps}", f"trainer.checkpoint_every={max(100, args.steps // 4)}",
                "trainer.progress=false"], work / "pretrain.log")  # fmt: skip
    t_pre = time.perf_counter() - t0
    scratch = random_init_export(run, work / "random" / "export")
    lines = ["| protocol | labeled volumes | init | mean Dice [95% CI] | Dice anterior | Dice posterior | "
             "mean HD95 mm [95% CI] |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for protocol, n in [(p, n) for p in args.protocols for n in args.labeled]:
        csv_path = write_csv(work / f"cases_{n}.csv", pool[:n], val, test)
        out = work / (f"finetune_{n}" if protocol == "full" else f"frozen_{n}")
        extra = ["finetune.train_blocks=0", "finetune.drop_path=0"] if protocol == "frozen" else []
        if args.skip_norm:
            out, extra = out.with_name(out.name + "_skipnorm"), [*extra, "segmentation.skip_norm=true"]
        if not (out / "summary.md").exists():
            le.cli(["finetune", "task=segmentation", f"data.csv={csv_path}", f"data.root={HIPPO}",
                    f"backbone=[{run},{scratch.parent}]", f"run_dir={out}", f"trainer.max_steps={args.finetune_steps}",
                    f"trainer.eval_every={max(25, args.finetune_steps // 6)}", "trainer.patience=100",
                    f"trainer.checkpoint_every={max(25, args.finetune_steps // 6)}", "trainer.lr=1e-3",
                    f"segmentation.classes={CLASSES}", "trainer.progress=false", *extra],
                   out.with_suffix(".log"))  # fmt: skip
        results = json.loads((out / "results.json").read_text())["results"]
        for name, init in (("mae3d", "mae3d_tiny"), ("random", "random init")):
            r = results[name]

            def cell(s):
                return "n/a" if s["mean"] is None else f"{s['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"

            lines.append(f"| {protocol} | {n} | {init} | {cell(r['mean_dice'])} | {cell(r['dice']['anterior'])} | "
                         f"{cell(r['dice']['posterior'])} | {cell(r['mean_hd95'])} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    (work / ("hippocampus_mae3d_skipnorm.md" if args.skip_norm else "hippocampus_mae3d.md")).write_text(text)
    print(text)
    print(f"pretraining {args.steps} steps: {t_pre:.0f} s; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

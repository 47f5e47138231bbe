"""It must learn, LVM-Med: on PneumoniaMNIST, `medical/lvm_med_tiny` vs SimCLR (`core/simclr_vit_tiny`) vs random
initialisation, the same ViT-Tiny/16 at 64 px (1 channel), batch 64 and steps for both SSL runs; kNN, the logistic
probe and finetuning with 1 % and 10 % of the training labels (CIs), through the CLI, with the protocol of
`benchmarks/label_efficiency.py` (whose helpers it uses).

    .venv/bin/python benchmarks/lvm_med_quality.py --steps 500      # about 35 min on 2 CPU cores
    .venv/bin/python benchmarks/lvm_med_quality.py --steps 500 --workdir .bench/lvm_med_mean \
        --lvm-override method.global_pool=mean --lvm-only     # the mean patch token as the global feature

Views: each method's recipe (LVM-Med: crops of scale 0.2-1 + flips + blur 0.5; SimCLR: 0.08-1 + flips + blur 0.5),
no colour jitter for either (grey X-rays). Writes ``<workdir>/lvm_med_quality.md``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_efficiency as le  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=le.REPO / ".bench" / "lvm_med_quality")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--lvm-override", nargs="*", default=[], help="extra overrides of the LVM-Med pretraining")
    parser.add_argument("--lvm-only", action="store_true", help="evaluate LVM-Med alone (the peers' rows unchanged)")
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table = le.write_pngs(le.NPZ, work / "images")
    train = np.load(le.NPZ)["train_images"] / 255.0
    mean, std = float(train.mean()), float(train.std())
    images = work / "images" / "train"
    lvm = le.pretrain(images, work / "lvm_med", args.steps, mean, std, "medical/lvm_med_tiny", args.lvm_override)
    if args.lvm_only:
        backbones = f"backbone=[{lvm.parent}]"
    else:
        simclr = le.pretrain(images, work / "simclr", args.steps, mean, std, "core/simclr_vit_tiny",
                             ["data.transform.photometric=null"])  # fmt: skip
        rand = le.random_init(lvm, work / "random" / "export")
        backbones = f"backbone=[{lvm.parent},{simclr.parent},{rand.parent}]"
    rows = []
    for fraction in args.fractions:
        tag = f"{fraction:g}"
        csv_path, n_train = le.subset(table, fraction, work / f"labels_{tag}.csv")
        rows += le.label_fraction_runs(work, backbones, csv_path, tag, fraction, n_train, args.finetune_steps)
    order = {"lvm_med": 0, "simclr": 1, "random": 2}
    rows.sort(key=lambda r: (r["protocol"], r["fraction"], order.get(r["init"], 3)))
    lines = ["| protocol | labels | init | bal. acc [95% CI] | AUROC [95% CI] |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['protocol']} | {r['fraction']:.0%} ({r['n_train']}) | {r['init']} | "
                     f"{le.cell(r, 'balanced_accuracy')} | {le.cell(r, 'auroc')} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    (work / "lvm_med_quality.md").write_text(text)
    print(text)
    print(f"{args.steps} pretraining steps each; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""MADELEINE on synthetic multistain bags with a planted slide label (``domainfm.pathology.synthetic_bags``): few-shot
slide classification (MADELEINE's protocol: logistic regression, k = 1 / 10 / 25 slides per class) of

- MADELEINE slide embeddings (``pathology/madeleine_tiny``: CPU widths, temperature 0.07; pretrained on an unlabeled
  multistain set; ``--set method.temperature=0.001`` for the official value),
- the same slide encoder at random initialisation,
- the mean of the patch features (the usual slide baseline),
- ABMIL trained on the k labeled slides (no pretraining; CLAM defaults, fixed steps),

on a separate labeled H&E set of the same world. AUROC mean over folds with a 95% CI of that mean (t interval over
the folds; every fold draws its own k slides per class, the test slides are fixed).

    .venv/bin/python benchmarks/madeleine_quality.py                 # ~5 min on 2 quiet CPU cores
    .venv/bin/python benchmarks/madeleine_quality.py --he-gap 1.0    # a weaker planted signal
    .venv/bin/python benchmarks/madeleine_quality.py --steps 50      # quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from domainfm.cli import compose_config
from domainfm.commands import pretrain
from domainfm.evaluation.abmil import train_abmil
from domainfm.evaluation.fewshot_linear import fewshot_logistic
from domainfm.evaluation.metrics import auroc
from domainfm.pathology.madeleine import MadeleineSlideEncoder
from domainfm.pathology.synthetic_bags import make_multistain_bags
from scipy import stats

STAINS = ("HE", "MARKER", "IHC2")


def labeled_set(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    import h5py

    with (folder / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    bags = []
    for r in rows:
        with h5py.File(folder / "features" / f"{r['slide_id']}_HE.h5", "r") as h:
            bags.append(h["features"][:])
    return bags, np.array([1 if r["label"] == "positive" else 0 for r in rows])


@torch.no_grad()
def embed(encoder: MadeleineSlideEncoder, bags: list[np.ndarray]) -> np.ndarray:
    encoder.eval()
    return np.stack([encoder(torch.from_numpy(b)[None].float())[0].numpy() for b in bags])


def ci(values: list[float]) -> tuple[float, float, float]:
    v = np.asarray(values)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def abmil_folds(train, train_y, test, test_y, k: int, folds: int, steps: int, work: Path) -> list[float]:
    out = []
    for fold in range(folds):
        rng = np.random.default_rng(fold)
        pick = np.concatenate([rng.choice(np.flatnonzero(train_y == c), k, replace=False) for c in (0, 1)])
        model, _ = train_abmil(
            ([train[i] for i in pick], train_y[pick]), ([train[i] for i in pick], train_y[pick]), 2,
            work / f"abmil_{k}_{fold}", steps=steps, eval_every=steps, patience=0, seed=fold, device="cpu",
            progress=False,
        )  # fmt: skip
        probs, _ = model.predict(test)
        out.append(float(auroc(test_y, probs)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pretrain-tissues", type=int, default=400)
    p.add_argument("--labeled", type=int, default=300, help="labeled H&E slides (half train pool, half test)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--folds", type=int, default=20)
    p.add_argument("--abmil-steps", type=int, default=200)
    p.add_argument("--he-gap", type=float, default=2.0, help="synthetic_bags: H&E distance of the label's two types")
    p.add_argument("--offset", type=float, default=1.5, help="synthetic_bags: per-slide offset scale")
    p.add_argument("--noise", type=float, default=0.5, help="synthetic_bags: per-patch noise")
    p.add_argument("--set", nargs="*", default=[], help="extra recipe overrides, e.g. method.temperature=0.07")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/madeleine_quality.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="madeleine_bench_"))
    t0 = time.time()
    world = dict(he_gap=args.he_gap, offset=args.offset, noise=args.noise)
    ms, _ = make_multistain_bags(work / "pretrain", args.pretrain_tissues, STAINS, seed=1, prefix="U", **world)
    make_multistain_bags(work / "labeled", args.labeled, STAINS, seed=2, prefix="L", missing=1.0, **world)
    bags, y = labeled_set(work / "labeled")
    half = len(bags) // 2
    train, train_y, test, test_y = bags[:half], y[:half], bags[half:], y[half:]
    cfg = compose_config(
        "pretrain",
        ["recipe=pathology/madeleine_tiny", f"data.csv={ms}", f"data.stains=[{','.join(STAINS)}]",
         "backbone.in_dim=32", f"run_dir={work / 'run'}", f"trainer.max_steps={args.steps}", "trainer.progress=false",
         "data.num_workers=0", *args.set],
    )  # fmt: skip
    t1 = time.time()
    pretrain.run(cfg)
    pretrain_s = time.time() - t1
    from domainfm.backbones.loading import load_backbone

    trained = load_backbone(str(work / "run" / "export"))
    torch.manual_seed(0)
    random = MadeleineSlideEncoder(**trained.config)
    embeddings = {
        "MADELEINE (pretrained)": embed(trained, bags),
        "same encoder, random init": embed(random, bags),
        "mean of patch features": np.stack([b.mean(0) for b in bags]),
    }
    results: dict[str, dict[int, list[float]]] = {}
    for name, z in embeddings.items():
        per_k, _ = fewshot_logistic(z[:half], train_y, z[half:], test_y, 2, (1, 10, 25), folds=args.folds)
        results[name] = {}
        for k in (1, 10, 25):  # the per-fold values, recomputed for the CI
            from sklearn.linear_model import LogisticRegression

            vals = []
            for fold in range(args.folds):
                rng = np.random.default_rng(fold)
                pick = np.concatenate([rng.choice(np.flatnonzero(train_y == c), k, replace=False) for c in (0, 1)])
                m = LogisticRegression(C=1.0, max_iter=10000, random_state=0).fit(z[:half][pick], train_y[pick])
                vals.append(float(auroc(test_y, m.predict_proba(z[half:]))))
            assert abs(np.mean(vals) - per_k[k]["auroc"][0]) < 1e-9
            results[name][k] = vals
    if args.abmil_steps:
        results["ABMIL on the k slides (no pretraining)"] = {
            k: abmil_folds(train, train_y, test, test_y, k, args.folds, args.abmil_steps, work) for k in (1, 10, 25)
        }
    lines = ["| slide representation | k=1 AUROC | k=10 AUROC | k=25 AUROC |", "|---|---|---|---|"]
    table = {}
    for name, per_k in results.items():
        cells = []
        for k in (1, 10, 25):
            m, lo, hi = ci(per_k[k])
            table.setdefault(name, {})[k] = [m, lo, hi]
            cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(f"pretraining {args.steps} steps: {pretrain_s:.0f} s; total {time.time() - t0:.0f} s; folds {args.folds}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "auroc": table}, indent=2))


if __name__ == "__main__":
    main()

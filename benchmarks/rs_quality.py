"""It must learn, remote sensing: `remote_sensing/mae_s2_tiny` (ViT-Tiny/8 at 32 px) pretrained on the 4,608 chips of
16 px (1.6 km) of the real Sentinel-2 L2A tile 29RKH (100 m after the sample's 10x downsampling; labels unused), vs
the same ViT at random initialisation, the same MAE on the RGB bands only (B04, B03, B02), and the chips' mean
reflectance per band (raw pixels, no network). Labels: each chip's majority SCL class (not vegetated vs thin
cirrus; the 16 cloud chips are under data.min_class), spatial splits (128 px blocks never straddle splits).
kNN (k=20) and logistic-regression probe, balanced accuracy with 95 % bootstrap CIs, through
`domainfm evaluate data.chips=...`. Then the normalisation measurement: the pretrained MAE evaluated with its
own normalisation (DN / 10000, recorded in the export) vs mismatched ones (per-band mean/std, 2-98 % stretch).

    .venv/bin/python benchmarks/rs_quality.py --steps 1000        # ~10 min on 2 CPU cores
    .venv/bin/python benchmarks/rs_quality.py --steps 1000 --normalize meanstd --pooling mean
    .venv/bin/python benchmarks/rs_quality.py --steps 1000 --normalize meanstd --pooling mean --chip-size 8 \
        --out .bench/rs_quality8 --min-class 100      # 18,679 chips of 8 px, bare soil vs thin cirrus

Writes a markdown table to stdout and ``.bench/rs_quality/results.json``. The chips come from the same tile the
labels do (SSL on the archive, labels unused): a transductive setting, as a user's archive would be.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TILE = REPO.parent / "shared" / "data" / "remote_sensing" / "sentinel2_l2a_29RKH"
OUT = REPO / ".bench" / "rs_quality"
RGB = "[B04,B03,B02]"


def make_chips(out: Path, size: int = 16) -> Path:
    from domainfm.remote_sensing.chips import ChipParams, chip_scenes
    from domainfm.remote_sensing.stats import archive_statistics

    if not (out / "chips.csv").is_file():
        chip_scenes(TILE, out, ChipParams(size=size, max_invalid=1.0, invalid_classes=[0]), progress=False)
        (out / "band_stats.json").write_text(json.dumps(archive_statistics(out, max_chips=2000, progress=False)))
    return out


def pretrain(chips: Path, run: Path, steps: int, bands: str | None, extra: tuple[str, ...] = ()) -> dict:
    from domainfm.cli import compose_config
    from domainfm.commands import pretrain as cmd

    shutil.rmtree(run, ignore_errors=True)
    overrides = [
        "recipe=remote_sensing/mae_s2_tiny",
        f"data.root={chips}",
        f"run_dir={run}",
        f"trainer.max_steps={steps}",
        "trainer.checkpoint_every=100000",
        "trainer.progress=false",
        "data.dataset.min_valid=null",  # every chip, cloudy ones too (labels are unused)
    ]
    if bands:
        overrides.append(f"preprocess.bands={bands}")
    overrides += list(extra)
    t0 = time.perf_counter()
    summary = cmd.run(compose_config("pretrain", overrides))
    return {"steps": summary["steps"], "seconds": time.perf_counter() - t0}


def evaluate(
    chips: Path,
    backbones: list[Path],
    run_dir: Path,
    normalization: str | None = None,
    pooling: str = "cls",
    min_class: int = 10,
) -> dict:
    from domainfm.cli import compose_config
    from domainfm.commands import evaluate as cmd

    overrides = [
        f"backbone=[{','.join(map(str, backbones))}]",
        f"data.chips={chips}",
        f"run_dir={run_dir}",
        "protocol=[knn,linear]",
        "linear.grid=false",
        "data.block_px=128",
        "progress=false",
        "report.plots=false",
        f"pooling={pooling}",
        f"data.min_class={min_class}",
    ]
    if normalization:
        overrides.append(f"data.normalization={normalization}")
    return cmd.run(compose_config("evaluate", overrides))


def raw_band_means(chips: Path, run_dir: Path, min_class: int = 10) -> dict:
    """kNN and the logistic probe on each chip's per-band mean reflectance (12 numbers), same splits."""
    from domainfm.evaluation.features import Features
    from domainfm.evaluation.protocols import run_protocols
    from domainfm.remote_sensing.commands.evaluate_chips import labeled_chips
    from domainfm.remote_sensing.datasets import ChipDataset

    data, rows = labeled_chips(chips, min_class=min_class, block_px=128)
    ds = ChipDataset(chips, labels=True, normalization="meanstd")
    x = np.stack([ds[int(i)]["image"].mean((1, 2)).numpy() for i in rows]).astype(np.float32)
    feats = Features(x, data.labels, data.ids, "cls", x.shape[1], data.classes, np.ones(len(x), bool))
    from domainfm.cli import compose_config
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_config("evaluate", ["linear.grid=false", "progress=false"]), resolve=True)
    return {"raw": [r.to_dict() for r in run_protocols(feats, data, ["knn", "linear"], cfg, run_dir)]}


def row(name: str, results: list[dict]) -> str:
    cells = []
    for r in results:
        m, (lo, hi) = r["metrics"]["balanced_accuracy"], r["ci"]["balanced_accuracy"]
        cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument(
        "--normalize", default=None, help="preprocess.normalize for pretraining (default: the recipe's)"
    )
    parser.add_argument("--pooling", default="cls", choices=["cls", "mean", "both"], help="features for kNN / probe")
    parser.add_argument("--chip-size", type=int, default=16, help="chip side in pixels of the 100 m grid")
    parser.add_argument("--out", type=Path, default=OUT, help="work folder")
    parser.add_argument("--min-class", type=int, default=10, help="SCL classes with fewer chips are left out")
    parser.add_argument("--reuse", action="store_true", help="keep the pretrained exports already in --out")
    args = parser.parse_args()
    out = args.out
    extra = (f"preprocess.normalize={args.normalize}",) if args.normalize else ()
    from domainfm.commands.demo import random_init_export

    out.mkdir(parents=True, exist_ok=True)
    chips = make_chips(out / "chips", args.chip_size)
    timing = {}
    for name, bands in (("mae_s2", None), ("mae_rgb", RGB)):
        if args.reuse and (out / name / "export").is_dir():
            continue
        timing[name] = pretrain(chips, out / name, args.steps, bands, extra)
        print(f"{name}: {timing[name]}", flush=True)
    random_init_export(out / "mae_s2", out / "random_s2" / "export")
    random_init_export(out / "mae_rgb", out / "random_rgb" / "export")
    main_results = evaluate(
        chips,
        [out / "mae_s2", out / "random_s2", out / "mae_rgb", out / "random_rgb"],
        out / "eval",
        pooling=args.pooling,
        min_class=args.min_class,
    )
    main_results.update(raw_band_means(chips, out / "eval_raw", args.min_class))
    own = args.normalize or "scale"
    norm = {f"own ({own})": main_results["mae_s2"]}
    for convention in [c for c in ("scale", "meanstd", "percentile") if c != own]:
        norm[convention] = evaluate(
            chips, [out / "mae_s2"], out / f"eval_{convention}", convention, args.pooling, args.min_class
        )["mae_s2"]
    print(f"\n{args.steps} steps, batch 64, ViT-Ti/8 at 32 px; balanced accuracy [95 % CI] on the test chips\n")
    print("| backbone | kNN (k=20) | logistic probe |\n|---|---|---|")
    labels = {"mae_s2": "mae_s2_tiny, 12 bands", "random_s2": "random init, 12 bands", "mae_rgb": "mae_s2_tiny, RGB",
              "random_rgb": "random init, RGB", "raw": "band means (raw pixels)"}  # fmt: skip
    for key, label in labels.items():
        print(row(label, main_results[key]))
    print("\n| mae_s2_tiny input normalisation | kNN (k=20) | logistic probe |\n|---|---|---|")
    for key, results in norm.items():
        print(row(key, results))
    (out / "results.json").write_text(json.dumps({"timing": timing, "main": main_results, "normalization": norm}))


if __name__ == "__main__":
    main()

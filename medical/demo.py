"""The medical demo (``domainfm demo medical``): raw volumes to a segmentation result at CPU scale — index the 16
bundled hippocampus MR volumes (``domainfm index``: geometry, manifest, decoded cache), pretrain
``medical/mae3d_tiny`` (MAE on 3D patches) on their images (no labels; the archive one later segments is the
intended pretraining data), export the 3D ViT, then finetune it under UNETR (``domainfm finetune
task=segmentation``) on 8 labeled volumes and report Dice / HD95 on 6 test volumes, side by side with the same
ViT at random initialisation."""

from __future__ import annotations

import time
from pathlib import Path

from domainfm.cli import compose_config
from domainfm.commands.demo import random_init_export, verdict
from domainfm.sample_data import sample_path


def _as_metrics(result: dict) -> dict:
    """A segmentation result's mean Dice in the ``metrics`` / ``ci`` layout :func:`verdict` reads."""
    return {"metrics": {"mean_dice": result["mean_dice"]["mean"]}, "ci": {"mean_dice": result["mean_dice"]["ci"]}}


def main(out: str | Path = "runs/demo_medical", steps: int | str = 300, finetune_steps: int | str = 80) -> dict:
    """``domainfm demo medical [out=<folder>] [steps=<n>] [finetune_steps=<n>]``."""
    from domainfm.commands import finetune, pretrain
    from domainfm.medical.commands import index

    start = time.perf_counter()
    out = Path(out).resolve()
    sample = sample_path("medical/hippocampus")
    index_args = [f"data.root={sample / 'imagesTr'}", f"out={out / 'index'}", "index.cache=true"]
    print("[1/3] indexing 16 T2 MR volumes (NIfTI): geometry, manifest, decoded cache", flush=True)
    print("      by hand: domainfm index " + " ".join(index_args), flush=True)
    index.run(compose_config("index", index_args))
    run = out / "mae3d_tiny"
    pretrain_args = [
        "recipe=medical/mae3d_tiny", f"data.root={out / 'index'}", f"run_dir={run}", f"trainer.max_steps={steps}",
        f"trainer.checkpoint_every={steps}",
    ]  # fmt: skip
    print(f"\n[2/3] pretraining mae3d_tiny for {steps} steps on 32^3 patches of the indexed volumes", flush=True)
    print("      by hand: domainfm pretrain " + " ".join(pretrain_args), flush=True)
    pretrain.run(compose_config("pretrain", pretrain_args))
    baseline = random_init_export(run, out / "random_init" / "export")
    every = max(10, int(finetune_steps) // 4)
    finetune_args = [
        "task=segmentation", f"data.csv={sample / 'cases.csv'}", f"backbone=[{run},{baseline.parent}]",
        f"run_dir={out / 'segmentation'}", f"trainer.max_steps={finetune_steps}", f"trainer.eval_every={every}",
        f"trainer.checkpoint_every={every}", "trainer.patience=100", "trainer.lr=1e-3",
        "segmentation.classes=[background,anterior,posterior]",
    ]  # fmt: skip
    print(f"\n[3/3] UNETR segmentation finetuning ({finetune_steps} steps), 8 labeled volumes, 6 test", flush=True)
    print("      by hand: domainfm finetune " + " ".join(finetune_args), flush=True)
    results = finetune.run(compose_config("finetune", finetune_args))
    trained, base = results["mae3d_tiny"], results["random_init"]
    print("\n" + verdict(_as_metrics(trained), _as_metrics(base), "mean_dice", "UNETR"))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    seg = out / "segmentation"
    print(f"  index            {out / 'index' / 'manifest.csv'}")
    print(f"  reconstructions  {run / 'report' / 'reconstructions.png'}")
    print(f"  segmentation     {seg / 'summary.md'}, overlays {seg / 'mae3d_tiny' / 'report' / 'segmentation.png'}")
    print(f"  exported models  {run / 'export'} (3D ViT), {seg / 'mae3d_tiny' / 'export'} (finetuned + UNETR)")
    return {"run": str(run), "segmentation": str(seg), "results": results}


if __name__ == "__main__":
    main()

"""The pathology demo (``make demo`` = ``domainfm demo pathology``): tile the bundled slide, pretrain
``pathology/uni_tiny`` for 60 steps (about a minute) on its tissue tiles, then kNN and a linear probe on the bundled
Kather 2016 tiles, side by side with the same ViT at random initialisation."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from domainfm.cli import compose_config
from domainfm.commands.demo import random_init_export
from domainfm.pathology.sample_data import SAMPLE_SLIDE
from domainfm.pathology.tiling import tile_slides
from domainfm.sample_data import sample_path


def main(out: str | Path = "runs/demo", steps: int | str = 60) -> dict:
    """``domainfm demo pathology [out=<folder>] [steps=<n>]``."""
    steps = int(steps)
    from domainfm.commands import evaluate, pretrain

    start = time.perf_counter()
    out = Path(out).resolve()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"[1/3] tiling {SAMPLE_SLIDE.name} at 0.5 um/px", flush=True)
    tiling = tile_slides(SAMPLE_SLIDE, out / "tiles", progress=True)
    print(tiling.render(), flush=True)

    print(f"\n[2/3] pretraining pathology/uni_tiny (DINOv2 on the tissue tiles) for {steps} steps", flush=True)
    run = out / "uni_tiny"
    pretrain.run(
        compose_config(
            "pretrain",
            [
                "recipe=pathology/uni_tiny",
                f"data.root={SAMPLE_SLIDE}",
                f"data.coords={out / 'tiles' / 'patches'}",
                f"run_dir={run}",
                f"trainer.max_steps={steps}",
                f"trainer.checkpoint_every={steps}",
            ],
        )
    )
    baseline = random_init_export(run, out / "random_init" / "export")

    print("\n[3/3] kNN and linear probe on the bundled Kather 2016 tiles (8 classes x 3 tiles)", flush=True)
    evaluate.run(
        compose_config(
            "evaluate",
            [
                f"backbone=[{run},{baseline}]",
                f"data.root={sample_path('kather2016_tiles')}",
                "protocol=[knn,linear]",
                "linear.grid=false",
                f"run_dir={out / 'evaluate'}",
                "knn.k=5",
            ],
        )
    )
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"  tiling overlay   {out / 'tiles' / 'overlays' / (SAMPLE_SLIDE.stem + '.png')}")
    print(f"  tissue contours  {out / 'tiles' / 'contours_geojson' / (SAMPLE_SLIDE.stem + '.geojson')} (QuPath)")
    print(f"  loss curve       {run / 'report' / 'loss.png'}")
    print(f"  evaluation       {out / 'evaluate' / 'summary.md'} (plots in {out / 'evaluate'})")
    print(f"  exported model   {run / 'export'}")
    return {"run": str(run), "evaluate": str(out / "evaluate")}


if __name__ == "__main__":
    main()

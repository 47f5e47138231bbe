"""The remote-sensing demos. ``domainfm demo remote_sensing``: RS-M-CLIP at CPU scale — pretrain
``remote_sensing/rs_m_clip_tiny`` (CLIP + DINO self-distillation, from scratch) on the bundled EuroSAT chips with
captions in 6 languages, then zero-shot classification (per language) and image-text retrieval on the 30 test chips
no caption describes, side by side with the same towers at random initialisation.

``domainfm demo remote_sensing method=mae_s2``: multispectral, from raw band files — the bundled 12-band Sentinel-2
L2A crop (per-band GeoTIFFs at 100 / 200 / 600 m + SCL) -> ``domainfm chips`` (an index of 16 px windows on one grid,
band statistics) -> ``remote_sensing/mae_s2_tiny`` -> an export that carries its bands and normalisation (loaded
back with :class:`~domainfm.remote_sensing.SpectralBackbone`, a wrong band order refused) -> kNN / linear probe and
finetuning on the chips labeled by their majority SCL class (spatial-block splits), vs the same ViT at random
initialisation."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from domainfm.cli import compose_config
from domainfm.commands.demo import random_init_export, verdict
from domainfm.errors import ConfigError, DataError
from domainfm.sample_data import sample_path


def main(out: str | Path = "runs/demo_remote_sensing", steps: int | str | None = None, method: str = "rs_m_clip",
         finetune_steps: int | str = 60) -> dict:  # fmt: skip
    """``domainfm demo remote_sensing [out=<folder>] [steps=<n>]`` (RS-M-CLIP, 3-4 min on 2 CPU cores);
    ``method=mae_s2 [steps=<n>] [finetune_steps=<n>]`` for the multispectral path (about 2 min)."""
    if method == "mae_s2":
        return mae_s2_demo(out, 200 if steps is None else int(steps), int(finetune_steps))
    if method != "rs_m_clip":
        raise ConfigError(f"method={method!r}: the remote-sensing demo runs rs_m_clip (default) or mae_s2")
    from domainfm.commands import evaluate, pretrain

    steps = 150 if steps is None else int(steps)
    start = time.perf_counter()
    out = Path(out).resolve()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sample = sample_path("remote_sensing/eurosat_rgb_small").parent
    print(f"[1/3] pretraining rs_m_clip_tiny for {steps} steps on 70 EuroSAT chips x 18 captions", flush=True)
    run = out / "rs_m_clip_tiny"
    overrides = ["recipe=remote_sensing/rs_m_clip_tiny", f"run_dir={run}", f"trainer.max_steps={steps}"]
    pretrain.run(compose_config("pretrain", [*overrides, f"trainer.checkpoint_every={steps}"]))
    baseline = random_init_export(run, out / "random_init" / "export")
    common = [f"backbone=[{run},{baseline}]", f"data.root={sample / 'eurosat_rgb_small'}"]

    print("\n[2/3] zero-shot classification of the 30 test chips, prompts in 6 languages", flush=True)
    zs = evaluate.run(
        compose_config(
            "evaluate",
            common
            + [
                f"data.csv={sample / 'eurosat_labels.csv'}",
                "protocol=[zeroshot]",
                f"zeroshot.prompts={sample / 'eurosat_prompts.json'}",
                f"run_dir={out / 'zeroshot'}",
            ],
        )
    )
    print("\n[3/3] image <-> text retrieval on the test chips' captions", flush=True)
    evaluate.run(
        compose_config(
            "evaluate",
            common
            + [
                f"data.captions={sample / 'eurosat_test_captions.csv'}",
                "protocol=[retrieval]",
                f"run_dir={out / 'retrieval'}",
            ],
        )
    )
    trained, base = (rows[0] for rows in zs.values())  # the ensemble over all languages
    print(f"\n{verdict(trained, base, label='zero-shot')}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"  loss curve       {run / 'report' / 'loss.png'}")
    print(f"  zero-shot        {out / 'zeroshot' / 'summary.md'} (confusion matrices in {out / 'zeroshot'})")
    print(f"  retrieval        {out / 'retrieval' / 'summary.md'}")
    print(f"  exported model   {run / 'export'} (image backbone + text_tower/)")
    return {"run": str(run), "zeroshot": str(out / "zeroshot"), "retrieval": str(out / "retrieval")}


S2_CROP = "remote_sensing/sentinel2_29RKH_crop"


def mae_s2_demo(out: str | Path, steps: int, finetune_steps: int) -> dict:
    """The multispectral demo (module docstring)."""
    from domainfm.commands import evaluate, finetune, pretrain
    from domainfm.remote_sensing import SpectralBackbone
    from domainfm.remote_sensing.commands import chips as chips_cmd

    start = time.perf_counter()
    out = Path(out).resolve()
    scene = sample_path(S2_CROP)
    print(f"[1/5] chips: 16 px windows of the 12-band Sentinel-2 crop ({scene.name}), band statistics", flush=True)
    chips = out / "chips"
    chip_args = [f"data.root={scene}", f"out={chips}", "chips.size=16", "chips.max_invalid=1.0",
                 "chips.invalid_classes=[0]", "workers=1"]  # fmt: skip
    print("      by hand: domainfm chips " + " ".join(chip_args), flush=True)
    chips_cmd.run(compose_config("chips", chip_args))

    print(f"\n[2/5] pretraining remote_sensing/mae_s2_tiny for {steps} steps (every chip, labels unused)", flush=True)
    run = out / "mae_s2_tiny"
    args = ["recipe=remote_sensing/mae_s2_tiny", f"data.root={chips}", f"run_dir={run}", f"trainer.max_steps={steps}",
            f"trainer.checkpoint_every={steps}", "data.dataset.min_valid=null"]  # fmt: skip
    print("      by hand: domainfm pretrain " + " ".join(args), flush=True)
    pretrain.run(compose_config("pretrain", args))
    baseline = random_init_export(run, out / "random_init" / "export").parent

    print("\n[3/5] the export carries its bands and normalisation", flush=True)
    model = SpectralBackbone.from_pretrained(str(run))
    print(f"      bands {', '.join(model.bands)}; normalisation {model.normalization.convention}", flush=True)
    try:
        model.prepare(torch.zeros(1, len(model.bands), 32, 32), bands=list(reversed(model.bands)))
    except DataError as err:
        print(f"      the same pixels in another band order are refused: {err}", flush=True)

    common = [f"backbone=[{run},{baseline}]", f"data.chips={chips}", "data.block_px=64", "data.min_class=10"]
    print("\n[4/5] kNN and linear probe on the chips labeled by their majority SCL class (spatial blocks)", flush=True)
    probe = evaluate.run(compose_config("evaluate", [*common, "protocol=[knn,linear]", "linear.grid=false",
                                                     f"run_dir={out / 'evaluate'}"]))  # fmt: skip
    print(f"\n[5/5] finetuning both for {finetune_steps} steps on the same splits", flush=True)
    every = max(1, finetune_steps // 3)
    tuned = finetune.run(compose_config("finetune", [*common, f"run_dir={out / 'finetune'}",
                         f"trainer.max_steps={finetune_steps}", f"trainer.eval_every={every}",
                         f"trainer.checkpoint_every={every}"]))  # fmt: skip
    (pre_knn, *_), (base_knn, *_) = probe.values()
    (pre_ft, *_), (base_ft, *_) = tuned.values()
    print(f"\n{verdict(pre_knn, base_knn, label='kNN')}")
    print(verdict(pre_ft, base_ft, label="finetuned"))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"  chips            {chips / 'chips.csv'} (band statistics {chips / 'band_stats.json'})")
    print(f"  reconstructions  {run / 'report'}")
    print(f"  probe            {out / 'evaluate' / 'summary.md'}")
    print(f"  finetuning       {out / 'finetune' / 'summary.md'}")
    print(f"  exported model   {run / 'export'} (finetuned: {out / 'finetune'}/<backbone>/export)")
    return {"run": str(run), "chips": str(chips), "probe": probe, "finetune": tuned}


if __name__ == "__main__":
    main()

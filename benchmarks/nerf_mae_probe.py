"""It must learn, radiance grids: `three_d/nerf_mae_tiny` (3D ViT 192 x 4 on 32^3 RGB + alpha grids, the official
loss and block masking) vs plain MAE on the same grids (the core's MAE: random 75 % token masking, tokens dropped,
a transformer decoder, MSE on every channel of the masked patches; same ViT, batch, lr and steps) vs the same ViT
at random initialisation, on NeRF-MAE's voxel-level task (semantic voxel labelling, frozen encoder, linear probe:
`domainfm evaluate data.grids=`): mIoU / mAcc / allAcc with 95 % CIs over test scenes; with ``--finetune N`` also
NeRF-MAE's own protocol, the encoder + semantic voxel head finetuned for N steps on the train scenes
(`domainfm finetune data.grids=`, checkpoint chosen on validation mIoU), on the same splits.

Data: synthetic scenes of four primitive classes with random colours (`three_d/synthetic_grids.py`; no labeled
radiance grid is redistributable), `--pretrain-scenes` unlabeled ones for pretraining (plus the real lego grid from
`domainfm radiance_grid` when `--lego` gives one), `--probe-scenes` other labeled ones for the probe.

    .venv/bin/python benchmarks/nerf_mae_probe.py --steps 600     # ~ 25 min on 2 CPU cores
    .venv/bin/python benchmarks/nerf_mae_probe.py --steps 600 --finetune 300   # + finetuning (pretraining resumes)

Writes a markdown table to stdout and ``.bench/nerf_mae_probe/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / ".bench" / "nerf_mae_probe"
MAE_PEER = [
    "method._target_=domainfm.methods.mae.MAE", "~method.decoder_channels", "+method.mask_ratio=0.75",
    "+method.decoder_dim=128", "+method.decoder_depth=2", "+method.decoder_heads=4", "+method.norm_pix_loss=false",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pretrain-scenes", type=int, default=200)
    parser.add_argument("--probe-scenes", type=int, default=60)
    parser.add_argument("--lego", type=Path, default=None, help="an rgbsigma.npz from domainfm radiance_grid")
    parser.add_argument("--methods", default="nerf_mae,mae")
    parser.add_argument("--finetune", type=int, default=0, help="steps of semantic voxel finetuning (0: none)")
    parser.add_argument("--finetune-scenes", default="all", help="training scenes per finetuning run, e.g. 20,100")
    parser.add_argument("--workdir", type=Path, default=OUT)
    parser.add_argument("--finetune-override", action="append", default=[], help="more finetune overrides")
    args = parser.parse_args()
    out = args.workdir

    from domainfm.cli import compose_config
    from domainfm.commands import pretrain
    from domainfm.commands.demo import random_init_export
    from domainfm.three_d.commands.voxel_probe import evaluate
    from domainfm.three_d.synthetic_grids import write_synthetic_grids

    out.mkdir(parents=True, exist_ok=True)
    unlabeled, labeled = out / "pretrain_grids", out / "probe_grids"
    if not unlabeled.is_dir():
        write_synthetic_grids(unlabeled, args.pretrain_scenes, size=32, seed=1, labels=False)
        if args.lego:
            shutil.copy(args.lego, unlabeled / "lego.npz")
    if not labeled.is_dir():
        write_synthetic_grids(labeled, args.probe_scenes, size=32, seed=2, labels=True)
    common = [
        "recipe=three_d/nerf_mae_tiny",
        f"data.root={unlabeled}",
        f"data.batch_size={args.batch}",
        f"trainer.max_steps={args.steps}",
        f"trainer.checkpoint_every={args.steps}",
        "trainer.progress=false",
    ]
    runs, timing = {}, {}
    for name in args.methods.split(","):
        run = out / name
        t0 = time.perf_counter()
        pretrain.run(compose_config("pretrain", [*common, f"run_dir={run}", *(MAE_PEER if name == "mae" else [])]))
        timing[name] = time.perf_counter() - t0
        runs[name] = run
    runs["random_init"] = random_init_export(runs[next(iter(runs))], out / "random_init" / "export").parent
    cfg = compose_config("evaluate", [f"data.grids={labeled}", f"backbone=[{','.join(map(str, runs.values()))}]",
                                      f"run_dir={out / 'probe'}"])  # fmt: skip
    results = evaluate(cfg)
    tuned = {}
    if args.finetune:
        from domainfm.three_d.commands.voxel_finetune import finetune

        every = max(1, args.finetune // 10)
        for n in args.finetune_scenes.split(","):
            t0 = time.perf_counter()
            tag = "finetune" if n == "all" else f"finetune_{n}_scenes"
            scenes = [] if n == "all" else [f"voxel_finetune.train_scenes={n}"]
            tuned[tag] = finetune(compose_config("finetune", [
                f"data.grids={labeled}", f"backbone=[{','.join(map(str, runs.values()))}]", f"run_dir={out / tag}",
                f"trainer.max_steps={args.finetune}", f"trainer.eval_every={every}",
                f"trainer.checkpoint_every={every}", "trainer.patience=0", "trainer.progress=false", *scenes,
                *args.finetune_override]))  # fmt: skip
            timing[tag] = time.perf_counter() - t0
    record = {
        "steps": args.steps,
        "batch": args.batch,
        "pretrain_scenes": args.pretrain_scenes,
        "probe_scenes": args.probe_scenes,
        "lego": bool(args.lego),
        "seconds": timing,
        "results": {k: {m: v[m] for m in ("metrics", "ci", "iou_per_class", "C")} for k, v in results.items()},
        "finetune_steps": args.finetune,
        "finetune_overrides": args.finetune_override,
        "finetune": {
            tag: {k: {m: v[m] for m in ("metrics", "ci", "iou_per_class", "best_step")} for k, v in r.items()}
            for tag, r in tuned.items()
        },
    }
    (out / "results.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record["seconds"]))


if __name__ == "__main__":
    main()

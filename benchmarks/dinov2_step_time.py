"""DINOv2 step time, domainfm against lightly 1.6.0, compute only: the same pre-generated batches (the recipe's
multi-crop views and iBOT masks on PneumoniaMNIST, 2 x 64 px + 4 x 32 px, batch 64, ViT-Ti/16), one training step of
each in turn, so both see the same machine state; the result is the median of the per-pair time ratios (with
quartiles), which this machine's drifting speed leaves meaningful where absolute times are not.

    PYTHONPATH=.bench/lightly .venv/bin/python benchmarks/dinov2_step_time.py --pairs 30
    PYTHONPATH=.bench/lightly .venv/bin/python benchmarks/dinov2_step_time.py --profile 6   # matmuls by shape

domainfm's step is the engine's (`build_optimizer` from the method's parameter groups, per-module clipping, the
method's hooks); lightly's is the loop of `ssl_quality.run_lightly_dinov2` (its heads, losses and masking helper,
one global clip). Data loading is left out of both (the same loader feeds both in `ssl_quality.py --speed`).
"""

from __future__ import annotations

import argparse

import hydra
import torch
from paired_steps import compare_steps
from ssl_quality import PATCH, SIZE, LightlyDINOv2, _backbone, _loader


def _batches(n: int, batch: int) -> list[dict]:
    from domainfm.data.masking import IBOTMask

    it = _loader("dinov2", batch, masking=IBOTMask(grid=SIZE // PATCH, prob=0.5, ratio=[0.1, 0.5]))  # the recipe's
    return [next(it) for _ in range(n)]


def domainfm_step(batches: list[dict]):
    from domainfm.cli import compose_config
    from domainfm.engine.optim import build_optimizer
    from domainfm.engine.trainer import clip_gradients
    from domainfm.methods.base import StepContext

    overrides = ["recipe=core/dinov2_vit_tiny", "preprocess.in_chans=1", f"preprocess.img_size={SIZE}"]
    cfg = compose_config("pretrain", [*overrides, f"backbone.patch_size={PATCH}"])
    _backbone()  # seeds as the lightly side
    method = hydra.utils.instantiate(cfg.method, _convert_="all").train()
    opt = build_optimizer(method, lr=5e-4, weight_decay=0.04)

    def step(i: int) -> None:
        ctx = StepContext(i, 1000)
        method(batches[i % len(batches)], ctx)["loss"].backward()
        clip_gradients(method, 3.0)
        method.before_optimizer_step(ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(ctx)

    return step


def lightly_step(batches: list[dict]):
    model = LightlyDINOv2()
    opt = torch.optim.AdamW(model.params, lr=5e-4, weight_decay=0.04)

    def step(i: int) -> None:
        model.loss(batches[i % len(batches)], temp=0.05).backward()
        torch.nn.utils.clip_grad_norm_(model.params, 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_teacher(0.995)

    return step


def profile_steps(ours, theirs, rounds: int, top: int = 24) -> None:
    """torch.profiler over ``rounds`` alternating steps of each: self time per step of the matrix multiplications
    and attention kernels by input shape, side by side, and each step's total self time."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    kernels = ("aten::mm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu")
    per: dict[str, dict] = {"domainfm": defaultdict(float), "lightly": defaultdict(float)}
    for i in range(rounds):
        for side, step in (("domainfm", ours), ("lightly", theirs)):
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                step(i)
            for e in prof.key_averages(group_by_input_shape=True):
                per[side]["total"] += e.self_cpu_time_total / rounds / 1e3
                if e.key.startswith(kernels):
                    per[side][f"{e.key.removeprefix('aten::')[:24]} {e.input_shapes}"[:110]] += (
                        e.self_cpu_time_total / rounds / 1e3
                    )
    keys = sorted(set(per["domainfm"]) | set(per["lightly"]), key=lambda k: -per["lightly"].get(k, 0.0))
    print(f"{'ms per step: domainfm':>22s} {'lightly':>8s}  op and input shapes")
    for k in keys[: top + 1]:
        print(f"{per['domainfm'].get(k, 0.0):22.1f} {per['lightly'].get(k, 0.0):8.1f}  {k}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--profile", type=int, default=0, help="profile this many steps of each instead of timing")
    args = ap.parse_args()
    batches = _batches(6, args.batch)
    ours, theirs = domainfm_step(batches), lightly_step(batches)
    if args.profile:
        for i in range(3):  # warm-up
            ours(i), theirs(i)
        profile_steps(ours, theirs, args.profile)
        return
    compare_steps(ours, theirs, "lightly", args.pairs)


if __name__ == "__main__":
    main()

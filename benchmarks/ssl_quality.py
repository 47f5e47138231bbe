"""It must learn: pretrain ViT-Tiny/16 at 64 px on PneumoniaMNIST train images (labels unused) with domainfm's `mae`
and `dinov2` recipes and with lightly's implementations of the same methods (same backbone, initialisation, views,
batch and number of steps), then kNN (k=20, cosine, centred) and a logistic-regression probe on the test split,
against the same backbone at random initialisation and raw pixels. Balanced accuracy and AUROC with 95 % bootstrap
CIs, and steps/s.

    PYTHONPATH=.bench/lightly .venv/bin/python benchmarks/ssl_quality.py --mae-steps 1000 --dinov2-steps 600
    PYTHONPATH=.bench/lightly .venv/bin/python benchmarks/ssl_quality.py --speed 60 --methods dinov2  # timing only
    # lightly lives only in the benchmark environment:
    .venv/bin/pip install --target .bench/lightly lightly==1.6.0 --no-deps

Writes a markdown table to stdout and ``.bench/ssl_quality/results.json`` (rows of earlier runs of other methods
are kept, so ``--methods dinov2`` adds to a finished ``--methods mae`` run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
NPZ = REPO.parent / "shared" / "data" / "medical" / "pneumoniamnist.npz"
SIZE, PATCH, MEAN, STD = 64, 16, [0.5], [0.25]


# ---------------------------------------------------------------- domainfm runs (through the CLI's config path)
def run_domainfm(method: str, steps: int, batch: int, out: Path) -> dict:
    from domainfm.cli import compose_config
    from domainfm.commands import pretrain

    common = [
        f"recipe=core/{method}_vit_tiny",
        f"run_dir={out}",
        f"data.root={NPZ}",
        f"trainer.max_steps={steps}",
        f"data.batch_size={batch}",
        "preprocess.in_chans=1",
        f"preprocess.img_size={SIZE}",
        f"preprocess.mean={MEAN}",
        f"preprocess.std={STD}",
        f"backbone.patch_size={PATCH}",
        "data.dataset._target_=domainfm.data.arrays.NpzImages",
        "trainer.checkpoint_every=100000",
        "trainer.progress=false",
    ]
    if method == "mae":  # plain pixel MSE, as lightly's MAE (norm_pix_loss drops the intensity cues of X-rays)
        common += ["method.norm_pix_loss=false"]
    if method == "dinov2":
        common += ["data.transform.photometric=null", "data.transform.local_size=32"]
    cfg = compose_config("pretrain", common)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume
    t = time.perf_counter()
    summary = pretrain.run(cfg)
    summary["wall_s"] = time.perf_counter() - t
    return summary


# ---------------------------------------------------------------- lightly runs (same backbone, views and schedule)
def _views(method: str, masking=None):
    """The recipe's views; ``masking`` adds iBOT masks to DINOv2's global views."""
    from domainfm.data.masking import RandomPatchMask
    from domainfm.data.transforms import ImageTransform, MultiCropView, RandomView

    if method == "mae":
        view = RandomView(SIZE, MEAN, STD, scale=(0.2, 1.0), interpolation="bicubic")  # as core/mae_vit_tiny
        return ImageTransform(view, RandomPatchMask(SIZE // PATCH, 0.75))
    # the recipe's views (photometric=null: grey images): bicubic crops, DINOv2's per-view blur / solarisation
    return MultiCropView(
        SIZE,
        MEAN,
        STD,
        local_size=32,
        n_local=4,
        global_blur=[1.0, 0.1],
        global_solarize=[0.0, 0.2],
        local_blur=0.5,
        interpolation="bicubic",
        masking=masking,
    )


def _loader(method: str, batch: int, seed: int = 0, masking=None):
    from domainfm.data.arrays import NpzImages
    from domainfm.data.collate import collate_samples
    from domainfm.data.sampling import SeededDataset, StreamSampler

    data = SeededDataset(NpzImages(NPZ), _views(method, masking))
    return iter(
        DataLoader(
            data,
            batch_size=batch,
            sampler=StreamSampler(len(data), batch, seed=seed),
            collate_fn=collate_samples,
            generator=torch.Generator(),
            drop_last=True,
        )
    )


def _backbone(seed: int = 0):
    from domainfm.backbones.vit import create_vit
    from domainfm.engine.runtime import seed_everything

    seed_everything(seed)
    return create_vit("vit_tiny_patch16_224", img_size=SIZE, patch_size=PATCH, in_chans=1)


def run_lightly_mae(steps: int, batch: int, lr: float, wd: float) -> tuple:
    from domainfm.common.schedules import CosineSchedule
    from lightly.models import utils
    from lightly.models.modules import MaskedVisionTransformerTIMM
    from lightly.models.modules.masked_autoencoder_timm import MAEDecoderTIMM

    vit = _backbone()
    backbone = MaskedVisionTransformerTIMM(vit=vit)
    decoder = MAEDecoderTIMM(
        num_patches=vit.patch_embed.num_patches,
        patch_size=PATCH,
        in_chans=1,
        embed_dim=vit.embed_dim,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
    )
    modules = torch.nn.ModuleList([backbone, decoder])
    opt = torch.optim.AdamW(modules.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=wd)
    sched = CosineSchedule(lr, 1e-6, warmup_steps=0.1)
    seq = backbone.sequence_length
    it = _loader("mae", batch)
    t = time.perf_counter()
    for step in range(steps):
        images = next(it)["image"]
        for g in opt.param_groups:
            g["lr"] = sched(step, steps)
        idx_keep, idx_mask = utils.random_token_mask(size=(images.shape[0], seq), mask_ratio=0.75)
        x = decoder.embed(backbone.encode(images=images, idx_keep=idx_keep))
        full = utils.repeat_token(decoder.mask_token, (images.shape[0], seq))
        full = utils.set_at_index(full, idx_keep, x.type_as(full))
        pred = decoder.predict(utils.get_at_index(decoder.decode(full), idx_mask))
        target = utils.get_at_index(utils.patchify(images, PATCH), idx_mask - 1)
        loss = torch.nn.functional.mse_loss(pred, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return vit, steps / (time.perf_counter() - t), float(loss)


class LightlyDINOv2:
    """lightly 1.6.0's DINOv2 parts on the benchmark's backbone (student, heads, EMA teacher, losses) and one step's
    loss on a multi-crop batch; shared by the quality run below and ``dinov2_step_time.py``."""

    def __init__(self):
        from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
        from lightly.models.modules import DINOv2ProjectionHead, MaskedVisionTransformerTIMM

        vit = _backbone()
        self.student = MaskedVisionTransformerTIMM(vit=vit, antialias=False, pos_embed_initialization="skip")
        self.head = DINOv2ProjectionHead(input_dim=192, hidden_dim=1024, bottleneck_dim=256, output_dim=4096)
        self.teacher = copy.deepcopy(self.student)
        # lightly's head uses the old weight_norm, which deepcopy refuses: build a second head, copy the weights
        self.t_head = DINOv2ProjectionHead(input_dim=192, hidden_dim=1024, bottleneck_dim=256, output_dim=4096)
        self.t_head.load_state_dict(self.head.state_dict())
        for p in list(self.teacher.parameters()) + list(self.t_head.parameters()):
            p.requires_grad = False
        self.dino, self.ibot, self.koleo = DINOLoss(output_dim=4096), IBOTPatchLoss(output_dim=4096), KoLeoLoss()
        self.params = list(self.student.parameters()) + list(self.head.parameters())

    def loss(self, b: dict, temp: float) -> torch.Tensor:
        from lightly.models.utils import random_block_mask

        student, head, grid = self.student, self.head, SIZE // PATCH
        g, loc = torch.cat(b["global_crops"]), torch.cat(b["local_crops"])
        B = g.shape[0]
        block = random_block_mask(size=(B, grid, grid), min_num_masks_per_block=1)  # 4 x 4 grid: blocks of >= 1
        mask = g.new_zeros((B, student.sequence_length), dtype=torch.bool)
        mask[:, 1:] = block.flatten(1)
        with torch.no_grad():
            t_feat = self.teacher.encode(g)
            t_cls, t_masked = self.t_head(t_feat[:, 0]), self.t_head(t_feat[mask])
        s_feat = student.encode(g, mask=mask)
        s_cls = head(torch.cat([s_feat[:, 0], student.encode(loc)[:, 0]]))
        n_views = 2 + len(b["local_crops"])
        loss = self.dino(teacher_out=t_cls.chunk(2), student_out=s_cls.chunk(n_views), teacher_temp=temp)
        loss = loss + self.ibot(teacher_out=t_masked, student_out=head(s_feat[mask]), mask=block, teacher_temp=temp)
        return loss + 0.1 * sum(self.koleo(c) for c in s_feat[:, 0].chunk(2))

    def update_teacher(self, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.student, self.teacher, m=m)
        update_momentum(self.head, self.t_head, m=m)


def run_lightly_dinov2(steps: int, batch: int, lr: float) -> tuple:
    from domainfm.common.schedules import CosineSchedule
    from lightly.utils.scheduler import cosine_schedule, linear_warmup_schedule

    model = LightlyDINOv2()
    opt = torch.optim.AdamW(model.params, lr=lr, weight_decay=0.04)
    sched = CosineSchedule(lr, 1e-6, warmup_steps=0.1)
    it = _loader("dinov2", batch)
    t = time.perf_counter()
    for step in range(steps):
        temp = linear_warmup_schedule(step=step, warmup_steps=int(0.3 * steps), start_value=0.04, end_value=0.07)
        loss = model.loss(next(it), temp)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = sched(step, steps)
            group["weight_decay"] = cosine_schedule(step=step, max_steps=steps, start_value=0.04, end_value=0.4)
        torch.nn.utils.clip_grad_norm_(model.params, 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_teacher(cosine_schedule(step=step, max_steps=steps, start_value=0.992, end_value=1.0))
    return model.teacher.vit, steps / (time.perf_counter() - t), float(loss)


def run_lightly(method: str, steps: int, batch: int) -> tuple:
    """lightly's ``method`` with the recipe's lr (and MAE's weight decay): ``(vit, steps/s, last loss)``."""
    if method == "mae":
        return run_lightly_mae(steps, batch, lr=1.5e-3, wd=0.05)
    return run_lightly_dinov2(steps, batch, lr=5e-4)


# ---------------------------------------------------------------- evaluation
def _split(name: str):
    with np.load(NPZ) as z:
        return z[f"{name}_images"], z[f"{name}_labels"].reshape(-1).astype(np.int64)


@torch.no_grad()
def embed(vit, images: np.ndarray, pooling: str) -> np.ndarray:
    from domainfm.data.transforms import ResizeView
    from domainfm.evaluation.features import pool_tokens

    view = ResizeView(SIZE, MEAN, STD)
    vit.eval()
    out = []
    for i in range(0, len(images), 256):
        x = torch.stack([view(torch.from_numpy(a).float()[None] / 255.0) for a in images[i : i + 256]])
        tokens = vit.forward_features(x)
        out.append(pool_tokens(tokens, vit.num_prefix_tokens, pooling).numpy())
    return np.concatenate(out)


def evaluate(features: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    from domainfm.evaluation.knn import knn_predict
    from domainfm.evaluation.linear import logistic_probe
    from domainfm.evaluation.metrics import evaluate_predictions

    knn = knn_predict(features["train"], labels["train"], features["test"], 2, k=20)
    model, _ = logistic_probe((features["train"], labels["train"]), (features["val"], labels["val"]), 2)
    out = {}
    for name, probs in (("knn", knn), ("linear", model.predict_proba(features["test"]))):
        r = evaluate_predictions(labels["test"], probs, n_boot=1000)
        out[name] = {m: (r["metrics"][m], r["ci"][m]) for m in ("balanced_accuracy", "auroc")}
    return out


def speed_only(args) -> None:
    """steps/s of domainfm and lightly, alternating, ``args.rounds`` times per method (no evaluation)."""
    work = REPO / ".bench" / "ssl_quality_speed"
    for method in args.methods.split(","):
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(run_domainfm(method, args.speed, args.batch, work / method)["steps_per_s"])
            theirs.append(run_lightly(method, args.speed, args.batch)[1])
        ratio = [a / b for a, b in zip(ours, theirs)]
        print(f"{method}: domainfm {ours} steps/s, lightly {theirs} steps/s, ratios {[round(r, 3) for r in ratio]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mae-steps", type=int, default=1000)
    ap.add_argument("--dinov2-steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--methods", default="mae,dinov2", help="comma-separated subset; rows merge into results.json")
    ap.add_argument("--skip-lightly", action="store_true")
    ap.add_argument("--speed", type=int, metavar="STEPS", help="only time STEPS steps of each, in --rounds rounds")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.speed:
        return speed_only(args)
    work = REPO / ".bench" / "ssl_quality"
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.json"
    saved = json.loads(results.read_text()) if results.exists() else {}
    rows, speed = saved.get("rows", {}), saved.get("steps_per_s", {})
    splits = {s: _split(s) for s in ("train", "val", "test")}
    labels = {s: y for s, (_, y) in splits.items()}

    def save():
        results.write_text(json.dumps({"rows": rows, "steps_per_s": speed}, indent=2, default=str))

    def add(name, vit, pooling):
        rows[name] = evaluate({s: embed(vit, x, pooling) for s, (x, _) in splits.items()}, labels)
        print(name, {k: round(v["balanced_accuracy"][0], 3) for k, v in rows[name].items()}, flush=True)
        save()

    rows["raw pixels (28x28)"] = evaluate({s: x.reshape(len(x), -1) / 255.0 for s, (x, _) in splits.items()}, labels)
    add("random init ViT-Ti/16 (mean-pool)", _backbone(), "mean")
    add("random init ViT-Ti/16 (cls)", _backbone(), "cls")
    budgets = {"mae": (args.mae_steps, "mean"), "dinov2": (args.dinov2_steps, "cls")}
    for method in args.methods.split(","):
        steps, pooling = budgets[method]
        rerun = (f"domainfm {method},",) + (() if args.skip_lightly else (f"lightly {method},",))
        for key in [k for k in rows if k.startswith(rerun)]:
            del rows[key]  # a rerun replaces its earlier rows; --skip-lightly keeps lightly's
        summary = run_domainfm(method, steps, args.batch, work / method)
        from domainfm.backbones.loading import load_backbone

        speed[f"domainfm {method}"] = summary["steps_per_s"]
        add(f"domainfm {method}, {steps} steps ({pooling})", load_backbone(work / method), pooling)
        if not args.skip_lightly:
            vit, rate, _ = run_lightly(method, steps, args.batch)
            speed[f"lightly {method}"] = rate
            add(f"lightly {method}, {steps} steps ({pooling})", vit, pooling)

    def cell(v):
        value, ci = v
        return "-" if value is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    print(f"threads={torch.get_num_threads()} batch={args.batch}")
    print("| backbone | kNN bal. acc | kNN AUROC | linear bal. acc | linear AUROC |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {cell(r['knn']['balanced_accuracy'])} | {cell(r['knn']['auroc'])} | "
            f"{cell(r['linear']['balanced_accuracy'])} | {cell(r['linear']['auroc'])} |"
        )
    print("\n| run | steps/s | vs lightly |\n|---|---|---|")
    for name, rate in speed.items():
        other = speed.get(name.replace("domainfm", "lightly"))
        ratio = f"{rate / other:.2f}x" if name.startswith("domainfm") and other else ""
        print(f"| {name} | {rate:.2f} | {ratio} |")
    if not math.isfinite(sum(speed.values())):
        raise SystemExit("non-finite speed")


if __name__ == "__main__":
    main()

"""The paper-scale core recipes (``core/<method>_vit_<size>``): each composes to the values its reference publishes
(the table below; each recipe's comments name the file and key), ``domainfm pretrain --cfg job`` prints the same,
its epochs expressed as steps reproduce the reference's own schedules, and it trains and exports once only its
sizes (depth, width, heads' widths, image and crop sizes, batch) are shrunk."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import yaml
from domainfm.commands.pretrain import trainer_config
from domainfm.common.schedules import CosineSchedule, LinearWarmupSchedule
from domainfm.sample_data import sample_path
from omegaconf import OmegaConf

from tests.conftest import TINY, compose, pretrain_in_process, run_cli

IMAGENET = {"preprocess.mean": [0.485, 0.456, 0.406], "preprocess.std": [0.229, 0.224, 0.225]}
DINOV2 = {  # dinov2/configs/ssl_default_config.yaml, data/augmentations.py
    **IMAGENET,
    "preprocess.img_size": 224,
    "backbone.drop_path_rate": 0.3,
    "backbone.init_values": 1.0e-5,
    "method.out_dim": 65536,
    "method.hidden_dim": 2048,
    "method.bottleneck_dim": 256,
    "method.head_layers": 3,
    "method.separate_ibot_head": False,
    "method.koleo_weight": 0.1,
    "method.ibot_weight": 1.0,
    "method.centering": "centering",
    "method.teacher_temp": [0.04, 0.07],
    "method.teacher_temp_warmup": 0.3,
    "method.momentum": [0.992, 1.0],
    "method.freeze_last_layer": 0.01,
    "method.layer_decay": 0.9,
    "method.patch_embed_lr_mult": 0.2,
    "data.batch_size": 64,
    "data.transform.n_global": 2,
    "data.transform.n_local": 8,
    "data.transform.global_scale": [0.32, 1.0],
    "data.transform.local_scale": [0.05, 0.32],
    "data.transform.interpolation": "bicubic",
    "data.transform.photometric.brightness": 0.4,
    "data.transform.photometric.contrast": 0.4,
    "data.transform.photometric.saturation": 0.2,
    "data.transform.photometric.hue": 0.1,
    "data.transform.photometric.jitter": 0.8,
    "data.transform.photometric.grayscale": 0.2,
    "data.transform.global_blur": [1.0, 0.1],
    "data.transform.global_solarize": [0.0, 0.2],
    "data.transform.local_blur": 0.5,
    "data.transform.blur_kernel": 9,
    "data.transform.masking.prob": 0.5,
    "data.transform.masking.ratio": [0.1, 0.5],
    "trainer.max_steps": 125000,
    "trainer.lr": 4.0e-3,
    "trainer.lr_scaling": "sqrt",
    "trainer.lr_base_batch": 1024,
    "trainer.min_lr": 1.0e-6,
    "trainer.warmup_steps": 0.1,
    "trainer.weight_decay": 0.04,
    "trainer.weight_decay_end": 0.4,
    "trainer.betas": [0.9, 0.999],
    "trainer.clip_grad": 3.0,
}
MOCO_VIEWS = {  # moco-v3 main_moco.py augmentation1 / augmentation2
    "data.transform.scale": [0.08, 1.0],
    "data.transform.photometric.jitter": 0.8,
    "data.transform.photometric.grayscale": 0.2,
}
PUBLISHED = {
    "mae_vit_base": {
        **IMAGENET,
        "preprocess.img_size": 224,
        "backbone.name": "vit_base_patch16_224",
        "backbone.patch_size": 16,
        "method.mask_ratio": 0.75,
        "method.decoder_dim": 512,
        "method.decoder_depth": 8,
        "method.decoder_heads": 16,
        "method.norm_pix_loss": True,
        "method.init": "mae",
        "data.batch_size": 64,
        "data.transform.view.scale": [0.2, 1.0],
        "data.transform.view.interpolation": "bicubic",
        "data.transform.view.hflip": 0.5,
        "data.transform.masking.ratio": 0.75,
        "data.transform.masking.grid": 14,
        "trainer.max_steps": 800 * 312,
        "trainer.lr": 1.5e-4,
        "trainer.lr_scaling": "linear",
        "trainer.lr_base_batch": 256,
        "trainer.min_lr": 0.0,
        "trainer.warmup_steps": 0.05,
        "trainer.weight_decay": 0.05,
        "trainer.weight_decay_end": None,
        "trainer.betas": [0.9, 0.95],
        "trainer.clip_grad": None,
    },
    "dinov2_vit_small": {
        **DINOV2,
        "backbone.name": "vit_small_patch14_dinov2",
        "backbone.patch_size": 14,
        "data.transform.local_size": 98,
        "data.transform.masking.grid": 16,
    },
    "dinov2_vit_large": {
        **DINOV2,
        "backbone.name": "vit_large_patch16_224",
        "backbone.patch_size": 16,
        "data.transform.local_size": 96,
        "data.transform.masking.grid": 14,
    },
    "simclr_vit_small": {
        **IMAGENET,
        "preprocess.img_size": 224,
        "backbone.name": "vit_small_patch16_224",
        "backbone.num_heads": 12,
        "method.proj_hidden": 384,
        "method.proj_dim": 128,
        "method.proj_layers": 3,
        "method.temperature": 0.1,
        "data.batch_size": 128,
        "data.transform.scale": [0.08, 1.0],
        "data.transform.interpolation": "bicubic",
        "data.transform.photometric.brightness": 0.8,
        "data.transform.photometric.contrast": 0.8,
        "data.transform.photometric.saturation": 0.8,
        "data.transform.photometric.hue": 0.2,
        "data.transform.photometric.jitter": 0.8,
        "data.transform.photometric.grayscale": 0.2,
        "data.transform.blur": 0.5,
        "data.transform.solarize": 0.0,
        "data.transform.blur_kernel": 23,
        "trainer.max_steps": 300 * 312,
        "trainer.lr": 1.5e-4,
        "trainer.lr_scaling": "linear",
        "trainer.lr_base_batch": 256,
        "trainer.min_lr": 0.0,
        "trainer.weight_decay": 0.1,
        "trainer.betas": [0.9, 0.999],
        "trainer.clip_grad": None,
    },
    "mocov3_vit_small": {
        **IMAGENET,
        **MOCO_VIEWS,
        "preprocess.img_size": 224,
        "backbone.name": "vit_small_patch16_224",
        "backbone.patch_size": 16,
        "backbone.num_heads": 12,
        "method.hidden": 4096,
        "method.dim": 256,
        "method.temperature": 0.2,
        "method.momentum": [0.99, 1.0],
        "method.freeze_patch_embed": True,
        "method.init": "mocov3",
        "data.batch_size": 128,
        "data.transform.interpolation": "bilinear",
        "data.transform.photometric.brightness": 0.4,
        "data.transform.photometric.contrast": 0.4,
        "data.transform.photometric.saturation": 0.2,
        "data.transform.photometric.hue": 0.1,
        "data.transform.blur": [1.0, 0.1],
        "data.transform.solarize": [0.0, 0.2],
        "trainer.max_steps": 300 * 1251,
        "trainer.optimizer": "adamw",
        "trainer.lr": 1.5e-4,
        "trainer.lr_scaling": "linear",
        "trainer.lr_base_batch": 256,
        "trainer.min_lr": 0.0,
        "trainer.weight_decay": 0.1,
        "trainer.betas": [0.9, 0.999],
        "trainer.clip_grad": None,
    },
    "clip_vit_b16": {
        "preprocess.img_size": 224,
        "preprocess.mean": [0.48145466, 0.4578275, 0.40821073],
        "preprocess.std": [0.26862954, 0.26130258, 0.27577711],
        "backbone.name": "vit_base_patch16_clip_224",
        "backbone.patch_size": 16,
        "method.embed_dim": 512,
        "method.loss": "clip",
        "method.text_tower.embed_dim": 512,
        "method.text_tower.width": 512,
        "method.text_tower.heads": 8,
        "method.text_tower.layers": 12,
        "method.text_tower.context_length": 77,
        "method.text_tower.vocab_size": 49408,
        "data.context_length": 77,
        "data.dataset.context_length": 77,
        "data.transform.view.scale": [0.9, 1.0],
        "data.transform.view.interpolation": "bicubic",
        "data.transform.view.hflip": 0.0,
        "trainer.lr": 5.0e-4,
        "trainer.lr_scaling": "none",
        "trainer.min_lr": 0.0,
        "trainer.warmup_steps": 10000,
        "trainer.weight_decay": 0.2,
        "trainer.betas": [0.9, 0.98],
        "trainer.clip_grad": None,
    },
}
# processes that give the published global batch, that batch, and the peak lr of the reference's scaling rule
# computed by hand: MAE/MoCo v3 blr x B / 256, DINOv2 base_lr x sqrt(B / 1024), open_clip's absolute lr
GLOBAL = {
    "mae_vit_base": (64, 4096, 1.5e-4 * 4096 / 256),
    "dinov2_vit_small": (32, 2048, 4e-3 * math.sqrt(2)),
    "dinov2_vit_large": (32, 2048, 4e-3 * math.sqrt(2)),
    "simclr_vit_small": (32, 4096, 1.5e-4 * 4096 / 256),
    "mocov3_vit_small": (8, 1024, 1.5e-4 * 1024 / 256),
    "clip_vit_b16": (256, 32768, 5e-4),
}
HEADS = {  # attention heads of the published architecture (MoCo v3's ViT-S has 12, timm's 6)
    "mae_vit_base": 12,
    "dinov2_vit_small": 6,
    "dinov2_vit_large": 16,
    "simclr_vit_small": 12,
    "mocov3_vit_small": 12,
    "clip_vit_b16": 12,
}
ARCHIVE = "/archive/imagenet/train"


def published(name: str) -> dict:
    cfg = compose("pretrain", [f"recipe=core/{name}", f"data.root={ARCHIVE}"])
    return OmegaConf.to_container(cfg, resolve=True)


def lookup(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_every_paper_recipe_has_its_published_values():
    for name, table in PUBLISHED.items():
        cfg = published(name)
        assert cfg["name"] == name
        wrong = {k: (lookup(cfg, k), v) for k, v in table.items() if lookup(cfg, k) != v}
        assert not wrong, f"{name}: {wrong}"
        raw = compose("pretrain", [f"recipe=core/{name}"])
        assert OmegaConf.is_missing(raw.data, "root"), name  # the archive is the user's: required, no sample data
        processes, batch, peak = GLOBAL[name]
        tcfg = trainer_config(compose("pretrain", [f"recipe=core/{name}", f"data.root={ARCHIVE}"]))
        assert tcfg.batch_size * processes * tcfg.accumulate == batch, name
        assert tcfg.peak_lr(processes) == pytest.approx(peak, rel=1e-12), name


def test_cfg_job_prints_each_paper_recipe(tmp_path):
    for name, table in PUBLISHED.items():
        out = run_cli(["pretrain", f"recipe=core/{name}", f"data.root={ARCHIVE}", "--cfg", "job"], tmp_path)
        assert out.returncode == 0, out.stderr
        shown = yaml.safe_load(out.stdout)
        assert shown["name"] == name and shown["data"]["root"] == ARCHIVE
        for key in ("backbone.name", "trainer.lr", "trainer.lr_scaling", "trainer.max_steps", "data.batch_size"):
            if key in table:
                assert lookup(shown, key) == table[key], (name, key)
    listed = run_cli(["recipes", "domain=core"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    for name in PUBLISHED:
        line = next(ln for ln in listed.stdout.splitlines() if ln.strip().startswith(f"core/{name} "))
        assert published(name)["description"] in line
    assert not (tmp_path / "runs").exists()


# --- the references' schedules, written out from their code ---------------------------------------------------


def epoch_cosine(epoch: float, lr: float, warmup: float, epochs: float, min_lr: float = 0.0) -> float:
    """mae util/lr_sched.py adjust_learning_rate (moco-v3 main_moco.py's is the same with min_lr 0), called per
    iteration with a fractional epoch."""
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def dinov2_cosine(base, final, total, warmup=0, start_warmup=0.0) -> np.ndarray:
    """dinov2/utils/utils.py CosineScheduler.schedule (no freeze iterations)."""
    iters = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((np.linspace(start_warmup, base, warmup), cosine))


def ours(schedule, steps, total) -> np.ndarray:
    return np.array([schedule(int(s), total) for s in steps])


def test_epoch_schedules_match_the_references():
    # MAE 800 / 40 epochs of 312 steps, MoCo v3 300 / 40 of 1251, SimCLR-on-ViT 300 / 40 of 312 (MoCo v3's rule)
    for name, per_epoch, epochs, warmup in (
        ("mae_vit_base", 312, 800, 40),
        ("mocov3_vit_small", 1251, 300, 40),
        ("simclr_vit_small", 312, 300, 40),
    ):
        tcfg = trainer_config(compose("pretrain", [f"recipe=core/{name}", f"data.root={ARCHIVE}"]))
        processes, _, peak = GLOBAL[name]
        total = tcfg.max_steps
        assert total == epochs * per_epoch, name
        lr = CosineSchedule(tcfg.peak_lr(processes), tcfg.min_lr, warmup_steps=tcfg.warmup_steps)
        w = warmup * per_epoch
        steps = np.unique(np.r_[0:5, w - 2 : w + 3, np.linspace(0, total - 1, 97)].astype(int))
        ref = [epoch_cosine(s / per_epoch, peak, warmup, epochs) for s in steps]
        np.testing.assert_allclose(ours(lr, steps, total), ref, rtol=1e-9, atol=1e-15, err_msg=name)
    # MoCo v3 main_moco.py adjust_moco_momentum: 1 - (1 + cos(pi * epoch / epochs)) * (1 - m) / 2
    cfg = published("mocov3_vit_small")
    m0, m1 = cfg["method"]["momentum"]
    steps = np.linspace(0, 375299, 101).astype(int)
    ref = [1 - 0.5 * (1 + math.cos(math.pi * (s / 1251) / 300)) * (1 - m0) for s in steps]
    np.testing.assert_allclose(ours(CosineSchedule(m0, m1), steps, 375300), ref, rtol=1e-12)

    # DINOv2: 100 "epochs" of 1250 iterations (train/train.py build_schedulers); lr at 2048 = 32 x 64
    for name in ("dinov2_vit_small", "dinov2_vit_large"):
        cfg = published(name)
        tcfg = trainer_config(compose("pretrain", [f"recipe=core/{name}", f"data.root={ARCHIVE}"]))
        total, peak = 100 * 1250, GLOBAL[name][2]
        assert tcfg.max_steps == total
        steps = np.unique(np.r_[0:3, 12498:12503, np.linspace(0, total - 1, 97)]).astype(int)
        method, schedules = cfg["method"], []
        ref_lr = dinov2_cosine(peak, 1e-6, total, warmup=10 * 1250)
        lr = CosineSchedule(tcfg.peak_lr(32), tcfg.min_lr, warmup_steps=tcfg.warmup_steps)
        schedules.append((lr, ref_lr, peak / 12500))  # linspace ends its warmup one step earlier
        schedules.append((CosineSchedule(tcfg.weight_decay, tcfg.weight_decay_end), dinov2_cosine(0.04, 0.4, total), 0))
        schedules.append((CosineSchedule(*method["momentum"]), dinov2_cosine(0.992, 1.0, total), 0))
        temp = LinearWarmupSchedule(*method["teacher_temp"], method["teacher_temp_warmup"])
        ref_temp = np.r_[dinov2_cosine(0.07, 0.07, 30 * 1250, 30 * 1250, 0.04), np.full(total - 30 * 1250, 0.07)]
        schedules.append((temp, ref_temp, 0.03 / 37500))
        for ours_schedule, ref, atol in schedules:
            np.testing.assert_allclose(ours(ours_schedule, steps, total), ref[steps], rtol=1e-9, atol=atol + 1e-15)
        # the last layer's lr is 0 for freeze_last_layer_epochs 1 (1250 iterations)
        assert method["freeze_last_layer"] * total == 1250

    # open_clip scheduler.py cosine_lr: warmup base * (step + 1) / warmup, then cosine to 0
    tcfg = trainer_config(compose("pretrain", ["recipe=core/clip_vit_b16", f"data.root={ARCHIVE}"]))
    total, warm, base = tcfg.max_steps, 10000, 5e-4
    steps = np.unique(np.r_[0:3, 9998:10003, np.linspace(0, total - 1, 97)]).astype(int)
    ref = [
        base * (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))) * base
        for s in steps
    ]
    lr = CosineSchedule(tcfg.peak_lr(256), tcfg.min_lr, warmup_steps=tcfg.warmup_steps)
    np.testing.assert_allclose(ours(lr, steps, total), ref, rtol=1e-9, atol=base / warm)


# --- each recipe trains with only its sizes shrunk ------------------------------------------------------------

# sizes only; every other published value (heads, patch size, losses, schedules, views) stays as composed
SHRINK = {
    "mae_vit_base": ["method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2"],
    "dinov2_vit_small": [
        "preprocess.img_size=28",  # 2 x 2 patches of 14
        "data.transform.local_size=14",
        "method.out_dim=64",
        "method.hidden_dim=32",
        "method.bottleneck_dim=16",
    ],
    "dinov2_vit_large": [
        "data.transform.local_size=16",
        "method.out_dim=64",
        "method.hidden_dim=32",
        "method.bottleneck_dim=16",
    ],
    "simclr_vit_small": ["method.proj_hidden=32", "method.proj_dim=16"],
    "mocov3_vit_small": ["method.hidden=64", "method.dim=16"],
    "clip_vit_b16": [
        "method.embed_dim=32",
        "method.text_tower.width=32",
        "method.text_tower.heads=2",
        "method.text_tower.layers=1",
    ],
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_paper_recipe_trains_and_exports_at_tiny_size(name, tmp_path, kather_tiles):
    run = tmp_path / name
    root = sample_path("rsicd_sample") if name.startswith("clip") else kather_tiles
    # TINY: 2 blocks, 32 px, no progress bars; 96 wide keeps every recipe's head count (6, 12, 16) a divisor; the
    # collapse monitor's fixed batch drawn small (it runs the recipe's full views: 10 crops a sample for DINOv2)
    overrides = [f"recipe=core/{name}", f"run_dir={run}", f"data.root={root}", "trainer.max_steps=2", *TINY]
    overrides += ["++backbone.embed_dim=96", "data.batch_size=4", "trainer.rank_samples=8", *SHRINK[name]]
    summary = pretrain_in_process(overrides)
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"]), name
    model = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True).eval()
    size = 28 if name == "dinov2_vit_small" else 32
    assert model.pretrained_cfg["tag"] == f"domainfm-{name}"
    assert tuple(model.pretrained_cfg["input_size"]) == (3, size, size)
    assert list(model.pretrained_cfg["mean"]) == PUBLISHED[name]["preprocess.mean"]
    # the published architecture survives the export: heads, patch size, LayerScale, CLIP's pre-norm
    assert model.blocks[0].attn.num_heads == HEADS[name]
    assert model.patch_embed.patch_size == ((14, 14) if name == "dinov2_vit_small" else (16, 16))
    assert hasattr(model.blocks[0].ls1, "gamma") == name.startswith("dinov2")
    assert isinstance(model.norm_pre, torch.nn.LayerNorm) == (name == "clip_vit_b16")
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 96)

"""CLIP step time, domainfm against open_clip 3.3.0's own training step, compute only, with the same towers and the
same starting weights: open_clip's `CustomTextCLIP` (ViT image tower: 64 px, patch 8, width 192, 6 layers; XLM-R-
layout HF text tower: 2 layers, width 128, mean pooler, MLP projection; embed 128 — RS-M-CLIP's architecture scaled
down) is built first and its state dict loaded into domainfm's `CLIP` (timm ViT + open_clip's `HFTextEncoder`)
with `load_open_clip_state`. The same pre-generated batches (images + token ids, batch 64) feed one step of each in
turn; the result is the median of the per-pair time ratios with quartiles.

    .venv/bin/python benchmarks/clip_step_time.py --pairs 30

open_clip's step is `open_clip_train/train.py::train_one_epoch`'s: `model(images, texts)`, `ClipLoss`, backward,
AdamW (biases and gains without weight decay, as `main.py` builds it), `logit_scale.clamp_(0, log 100)`.
domainfm's is the engine's (`build_optimizer`, the method's `after_step` clamp). Data loading is left out of both.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
from paired_steps import compare_steps

HF = {
    "model_type": "xlm-roberta",
    "vocab_size": 2000,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 66,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "layer_norm_eps": 1e-5,
}
VISION = dict(image_size=64, layers=6, width=192, patch_size=8, head_width=64)


def towers():
    from open_clip.model import CustomTextCLIP

    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps(HF))
    torch.manual_seed(0)
    reference = CustomTextCLIP(128, VISION, dict(hf_model_name=str(folder), hf_model_pretrained=False)).train()
    return reference


def open_clip_step(model):
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    named = list(model.named_parameters())
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # main.py
    groups = [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2},
    ]
    opt = torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-6)

    def step(batch) -> None:
        image_features, text_features, logit_scale = model(batch["image"], batch["text"])
        loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return step


def domainfm_step(reference):
    from domainfm.backbones.vit import create_vit
    from domainfm.engine.optim import build_optimizer
    from domainfm.methods.base import StepContext
    from domainfm.methods.clip import CLIP
    from domainfm.methods.clip_towers import hf_text_tower, load_open_clip_state

    vit = create_vit("vit_base_patch32_clip_224", img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3)
    method = CLIP(vit, hf_text_tower(128, HF), 128).train()
    load_open_clip_state(vit, method.image_proj, method.text_tower, method.logits.logit_scale, reference.state_dict())
    opt = build_optimizer(method, lr=5e-4, weight_decay=0.2, betas=(0.9, 0.98))

    count = iter(range(10**9))

    def step(batch) -> None:
        ctx = StepContext(next(count), 1000)
        method(batch, ctx)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(ctx)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(6):
        text = torch.randint(3, 2000, (args.batch, 32), generator=g)
        text[:, 0], text[:, 20:] = 0, 1
        batches.append({"image": torch.randn(args.batch, 3, 64, 64, generator=g), "text": text})
    reference = towers()
    ours = domainfm_step(reference)  # loads the reference's weights before either trains
    theirs = open_clip_step(reference)
    run = lambda step: lambda i: step(batches[i % len(batches)])
    compare_steps(run(ours), run(theirs), "open_clip", args.pairs)


if __name__ == "__main__":
    main()

"""Method mechanics: EMA teachers, DINOv2's view pairing and frozen prototypes, MoCo v3, SimMIM, CLIP."""

import copy

import pytest
import torch
from domainfm.backbones.vit import create_vit
from domainfm.data.masking import IBOTMask
from domainfm.methods.base import StepContext
from domainfm.methods.clip import CLIP, open_clip_text_tower
from domainfm.methods.contrastive import MoCoV3, SimCLR
from domainfm.methods.dinov2 import DINOv2
from domainfm.methods.ema import ema_update, make_teacher
from domainfm.methods.simmim import SimMIM
from domainfm.objectives.dino import cross_entropy


def _vit(size=32):
    torch.manual_seed(0)
    return create_vit(img_size=size, patch_size=8, depth=1)


def _dino_batch(B=4):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    masks = torch.stack([torch.stack([IBOTMask(4, prob=1.0)() for _ in range(2)]) for _ in range(B)])
    return {
        "global_crops": [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)],
        "local_crops": [torch.randn(B, 3, 16, 16, generator=g) for _ in range(2)],
        "masks": masks,
    }


def test_ema_update_formula():
    student = torch.nn.Linear(2, 2)
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.add_(1.0)
    before = teacher.weight.clone()
    ema_update(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, 0.9 * before + 0.1 * student.weight)


def test_dinov2_loss_terms_and_teacher_pairing():
    method = DINOv2(_vit(), out_dim=32, hidden_dim=16, bottleneck_dim=8, koleo_weight=0.0, ibot_weight=0.0)
    batch = _dino_batch()
    ctx = StepContext(0, 10)
    out = method(batch, ctx)
    # recompute the DINO terms by hand: teacher view A teaches student view B and vice versa; locals see both
    t = method.teacher.encoder
    temp = method.teacher_temp(0, 10)
    with torch.no_grad():
        t_logits = [method.teacher.head(t(x).cls) for x in batch["global_crops"]]
    center = torch.zeros(1, 32)  # the centre before this batch
    probs = [torch.softmax((tl - center) / temp, -1) for tl in t_logits]
    masks = torch.cat([batch["masks"][:, 0], batch["masks"][:, 1]])
    s_global = method.student.head(method.student.encoder(torch.cat(batch["global_crops"]), masks, mode="replace").cls)
    s_a, s_b = s_global.chunk(2)
    s_locals = [method.student.head(method.student.encoder(x).cls) for x in batch["local_crops"]]
    n_terms = 2 + 2 * 2
    glob = (cross_entropy(probs[1], s_a, 0.1).mean() + cross_entropy(probs[0], s_b, 0.1).mean()) / n_terms
    loc = sum(cross_entropy(p, s, 0.1).mean() for s in s_locals for p in probs) / n_terms
    torch.testing.assert_close(out["dino_global"], glob.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["dino_local"], loc.detach(), rtol=1e-4, atol=1e-6)


def test_dinov2_full_step_teacher_moves_only_by_ema_and_prototypes_freeze():
    method = DINOv2(_vit(), out_dim=32, hidden_dim=16, bottleneck_dim=8, freeze_last_layer=0.5)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    last = method.student.head.last_layer.parametrizations.weight.original1
    last_before, teacher_before = last.detach().clone(), copy.deepcopy(method.teacher.state_dict())
    ctx = StepContext(0, 10)  # step 0 < 0.5 * 10: prototypes frozen
    out = method(_dino_batch(), ctx)
    assert {"dino_global", "dino_local", "koleo", "ibot"} <= set(out)
    out["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    method.before_optimizer_step(ctx)
    opt.step()
    assert torch.equal(last, last_before)
    method.after_step(ctx)
    m = method.momentum(0, 10)
    name = "encoder.vit.blocks.0.attn.qkv.weight"
    expected = m * teacher_before[name] + (1 - m) * method.student.state_dict()[name]
    torch.testing.assert_close(method.teacher.state_dict()[name], expected)
    assert method.backbone is method.teacher.encoder.vit  # the teacher is exported
    late = StepContext(6, 10)
    method(_dino_batch(), late)["loss"].backward()
    method.before_optimizer_step(late)
    assert last.grad is not None


def test_simclr_mocov3_simmim_clip_train_one_step():
    torch.manual_seed(0)
    views = {"view1": torch.randn(4, 3, 32, 32), "view2": torch.randn(4, 3, 32, 32)}
    for method in (SimCLR(_vit(), 64, 16), MoCoV3(_vit(), 64, 16)):
        loss = method(views)["loss"]
        loss.backward()
        assert torch.isfinite(loss)
    moco = MoCoV3(_vit(), 64, 16, freeze_patch_embed=True)
    assert not any(p.requires_grad for p in moco.backbone.patch_embed.parameters())
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, ::3] = True
    simmim = SimMIM(_vit())
    loss = simmim({"image": torch.randn(4, 3, 32, 32), "mask": mask})["loss"]
    loss.backward()
    assert simmim.encoder.mask_token.grad is not None and torch.isfinite(loss)
    clip = CLIP(_vit(), open_clip_text_tower(embed_dim=32, width=32, heads=2, layers=1, context_length=16), 32)
    out = clip({"image": torch.randn(4, 3, 32, 32), "text": torch.randint(1, 100, (4, 16))})
    out["loss"].backward()
    assert clip.logits.logit_scale.grad is not None
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-4)


def test_mae_initialisation_of_fresh_backbones_only(tmp_path):
    import math

    import numpy as np
    from domainfm.backbones.pos_embed import sincos_pos_embed
    from domainfm.engine.export import export_backbone
    from domainfm.methods.mae import MAE

    vit = _vit()
    mae = MAE(vit, decoder_dim=32, decoder_depth=1)
    # fixed 2D sin-cos positions (MAE's get_2d_sincos_pos_embed, cls position zero), not trained
    assert not vit.pos_embed.requires_grad
    torch.testing.assert_close(vit.pos_embed[0, 0], torch.zeros(192))
    grid = np.arange(4, dtype=np.float64)
    omega = 1.0 / 10000 ** (np.arange(48) / 48.0)
    w, h = np.meshgrid(grid, grid)  # MAE's order: the first half embeds the column (w), the second the row (h)
    expected = np.concatenate([np.sin(np.outer(w.ravel(), omega)), np.cos(np.outer(w.ravel(), omega))], axis=1)
    expected = np.concatenate(
        [expected, np.sin(np.outer(h.ravel(), omega)), np.cos(np.outer(h.ravel(), omega))], axis=1
    )
    torch.testing.assert_close(vit.pos_embed[0, 1:], torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(vit.pos_embed[0, 1:], sincos_pos_embed((4, 4), 192))
    # Xavier-uniform linears with zero bias (std sqrt(2 / (fan_in + fan_out))), patch embedding as a linear layer
    qkv = vit.blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() / math.sqrt(2 / (192 + 576)) - 1) < 0.05 and not qkv.bias.any()
    proj = vit.patch_embed.proj.weight
    assert proj.abs().max() <= math.sqrt(6 / (3 * 64 + 192)) and abs(proj.std().item() / math.sqrt(2 / 384) - 1) < 0.05
    assert abs(mae.decoder.pred.weight.std().item() / math.sqrt(2 / (32 + 192)) - 1) < 0.1
    # loaded weights are kept
    export_backbone(
        _vit(), tmp_path / "export", {"in_chans": 3, "img_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}
    )
    loaded = create_vit(img_size=32, patch_size=8, depth=1, weights=str(tmp_path / "export"))
    before = copy.deepcopy(loaded.state_dict())
    MAE(loaded, decoder_dim=32, decoder_depth=1)
    assert all(torch.equal(before[k], v) for k, v in loaded.state_dict().items()) and loaded.pos_embed.requires_grad
    kept = _vit()
    before = copy.deepcopy(kept.state_dict())
    MAE(kept, init="keep", decoder_dim=32, decoder_depth=1)
    assert all(torch.equal(before[k], v) for k, v in kept.state_dict().items())

"""Details of the official codes that move results: DINOv2's parameter groups and per-module clipping, the lr
scaling rule, MoCo v3's ViT initialisation, the heads' final BatchNorms, SyncBatchNorm under DDP, and the collapse
monitor (RankMe)."""

import logging
import math

import pytest
import torch
from domainfm.backbones.init import mocov3_init_
from domainfm.backbones.vit import create_vit
from domainfm.engine.collapse import effective_rank
from domainfm.engine.strategy import sync_batchnorm
from domainfm.engine.trainer import Trainer, TrainerConfig, clip_gradients
from domainfm.methods.contrastive import MoCoV3, SimCLR
from domainfm.methods.dinov2 import DINOv2
from domainfm.methods.mae import MAE
from torch import nn


def _vit(**kw):
    return create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3, **kw)


def _dinov2(**kw):
    return DINOv2(_vit(init_values=1e-5), out_dim=64, hidden_dim=32, bottleneck_dim=16, separate_ibot_head=True, **kw)


def _dinov2_reference_scales(name: str, n_blocks: int, decay: float = 0.9, patch_mult: float = 0.2):
    """dinov2/utils/param_groups.py::get_vit_lr_decay_rate + get_params_groups_with_decay, on backbone names."""
    layer = n_blocks + 1
    if any(k in name for k in ("pos_embed", "patch_embed", "mask_token", "cls_token", "reg_token")):
        layer = 0
    elif "blocks." in name:
        layer = int(name[name.find("blocks.") :].split(".")[1]) + 1
    lr = decay ** (n_blocks + 1 - layer)
    if "patch_embed" in name:
        lr *= patch_mult
    wd = 0.0 if name.endswith(".bias") or "norm" in name or "gamma" in name else 1.0
    return lr, wd


def test_dinov2_parameter_groups_follow_the_official_code():
    method = _dinov2()
    groups = method.optim_groups()
    got = {id(p): (g["lr_scale"], g["wd_scale"]) for g in groups for p in g["params"]}
    names = dict(method.student.named_parameters())
    assert len(got) == sum(p.requires_grad for p in names.values())  # every trainable student parameter, once
    for name, p in names.items():
        if name.startswith("encoder."):
            sub = name.removeprefix("encoder.").removeprefix("vit.")
            expected = _dinov2_reference_scales(sub, 12)
        else:  # heads: lr multiplier 1, decayed unless bias
            expected = (1.0, 0.0 if name.endswith(".bias") else 1.0)
        assert got[id(p)] == pytest.approx(expected), name
    # the facts, spelled out: tokens and positions are decayed, LayerScale gammas and norms are not
    vit = "encoder.vit."
    assert got[id(names[vit + "cls_token"])] == pytest.approx((0.9**13, 1.0))
    assert got[id(names[vit + "pos_embed"])] == pytest.approx((0.9**13, 1.0))
    assert got[id(names[vit + "patch_embed.proj.weight"])] == pytest.approx((0.2 * 0.9**13, 1.0))
    assert got[id(names["encoder.mask_token"])] == pytest.approx((0.9**13, 1.0))
    assert got[id(names[vit + "blocks.11.ls1.gamma"])] == pytest.approx((0.9, 0.0))
    assert got[id(names[vit + "blocks.0.norm1.weight"])] == pytest.approx((0.9**12, 0.0))
    assert got[id(names[vit + "norm.weight"])] == pytest.approx((1.0, 0.0))
    # the engine applies them: lr = scheduled lr x lr_scale
    from domainfm.engine.optim import build_optimizer

    opt = build_optimizer(method, lr=2.0, weight_decay=0.04)
    for g in opt.param_groups:
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_scale"])


def test_dinov2_clips_each_module_separately():
    """dinov2/train/train.py: ``for v in model.student.values(): v.clip_grad_norm_(3.0)``."""
    method = _dinov2()
    groups = method.grad_clip_groups()
    assert [len(g) for g in groups] == [
        sum(p.requires_grad for p in m.parameters())
        for m in (method.student.encoder, method.student.head, method.student.ibot_head)
    ]
    for scale, params in zip((10.0, 0.001, 5.0), groups):
        for p in params:
            p.grad = torch.full_like(p, scale)
    before = [torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in g])).item() for g in groups]
    norms = clip_gradients(method, 3.0)
    assert [float(n) for n in norms] == pytest.approx(before, rel=1e-5)
    after = [torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in g])).item() for g in groups]
    assert after[0] == pytest.approx(3.0, rel=1e-4) and after[2] == pytest.approx(3.0, rel=1e-4)
    assert after[1] == pytest.approx(before[1], rel=1e-6)  # a small head gradient is not scaled down by the others


@pytest.mark.parametrize(
    ("rule", "world", "accumulate", "expected"),
    [("none", 2, 1, 4e-3), ("sqrt", 1, 1, 4e-3 * math.sqrt(64 / 1024)), ("sqrt", 2, 4, 4e-3 * math.sqrt(512 / 1024))],
)
def test_lr_scaling_rule_counts_every_process_and_accumulation_step(rule, world, accumulate, expected):
    cfg = TrainerConfig(lr=4e-3, lr_scaling=rule, lr_base_batch=1024, batch_size=64, accumulate=accumulate)
    assert cfg.peak_lr(world) == pytest.approx(expected)
    linear = TrainerConfig(lr=1.5e-4, lr_scaling="linear", lr_base_batch=256, batch_size=4096)
    assert linear.peak_lr(1) == pytest.approx(1.5e-4 * 16)  # MAE: blr x batch / 256
    from domainfm.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.lr_scaling='cube'; valid values: none, linear, sqrt"):
        TrainerConfig.from_dict({"lr_scaling": "cube"})


def test_mocov3_initialisation_matches_vits_py():
    torch.manual_seed(0)
    vit = mocov3_init_(_vit())
    D, (h, w) = vit.embed_dim, vit.patch_embed.grid_size
    # moco-v3 vits.py build_2d_sincos_position_embedding (square grid), re-derived
    gw, gh = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(D // 4, dtype=torch.float32) / (D // 4))
    out_w, out_h = gw.flatten()[:, None] * omega, gh.flatten()[:, None] * omega
    ref = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    torch.testing.assert_close(vit.pos_embed[0, 1:], ref, atol=1e-6, rtol=0)
    assert vit.pos_embed[0, 0].abs().max() == 0 and not vit.pos_embed.requires_grad
    qkv = vit.blocks[0].attn.qkv.weight
    bound = math.sqrt(6.0 / (qkv.shape[0] // 3 + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound
    fc = vit.blocks[0].mlp.fc1.weight
    assert fc.abs().max() <= math.sqrt(6.0 / sum(fc.shape)) and vit.blocks[0].mlp.fc1.bias.abs().max() == 0
    proj = vit.patch_embed.proj.weight
    assert proj.abs().max() <= math.sqrt(6.0 / (3 * 64 + D))
    assert vit.cls_token.std() < 1e-5
    # the method re-initialises fresh backbones only and freezes the patch projection (stop-grad-conv1)
    moco = MoCoV3(_vit(), hidden=32, dim=16)
    assert not moco.backbone.pos_embed.requires_grad and not moco.backbone.patch_embed.proj.weight.requires_grad
    loaded = _vit()
    loaded.domainfm_weights = "some/weights"
    before = loaded.pos_embed.detach().clone()
    assert torch.equal(MoCoV3(loaded, hidden=32, dim=16).backbone.pos_embed, before)


def test_heads_end_in_the_references_batchnorms():
    moco = MoCoV3(_vit(), hidden=32, dim=16)
    for head in (moco.online.projector, moco.predictor):  # moco-v3 _build_mlp(..., last_bn=True)
        last, linear = head.net[-1], head.net[-2]
        assert isinstance(last, nn.BatchNorm1d) and not last.affine and linear.bias is None
    simclr = SimCLR(_vit(), proj_hidden=32, proj_dim=8)  # simclr linear_layer(use_bias=False, use_bn=True)
    last, linear = simclr.projector.net[-1], simclr.projector.net[-2]
    assert isinstance(last, nn.BatchNorm1d) and last.weight.requires_grad and not last.bias.requires_grad
    assert linear.bias is None


def test_batchnorms_become_sync_batchnorm_on_gpus_only():
    method = MoCoV3(_vit(), hidden=32, dim=16)
    n_bn = sum(isinstance(m, nn.BatchNorm1d) for m in method.modules())
    params = [id(p) for p in method.parameters()]
    assert sync_batchnorm(method, torch.device("cpu")) == 0  # no CPU kernel: gloo runs keep per-process stats
    assert sync_batchnorm(method, torch.device("cuda")) == n_bn  # conversion itself needs no GPU
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in method.modules()) == n_bn
    assert [id(p) for p in method.parameters()] == params  # same parameters: EMA pairs and optimizer stay valid


def test_effective_rank_on_hand_made_embeddings():
    eye = torch.eye(8)
    assert effective_rank(eye) == pytest.approx(8.0, rel=1e-5)  # equal singular values: rank = d
    rank_one = torch.randn(16, 1) @ torch.randn(1, 8)
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-4)
    s = torch.tensor([3.0, 1.0])  # exp(entropy of (0.75, 0.25))
    z = torch.diag(s)
    p = s / s.sum()
    assert effective_rank(z) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)


class RandomImages(torch.utils.data.Dataset):
    """Synthetic: fixed random 3 x 32 x 32 images."""

    def __init__(self, n=48):
        self.x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i]}


def _collapse(method) -> None:
    """Every input maps to (almost) the same point: the final norm outputs its bias."""
    with torch.no_grad():
        method.backbone.norm.weight.zero_()
        method.backbone.norm.bias.normal_()


class CollapsingMAE(MAE):
    """Healthy at the start, collapsed by its first step (as a run whose lr or views break it)."""

    def after_step(self, ctx):
        super().after_step(ctx)
        if ctx.step == 1:
            _collapse(self)


def _mae_run(tmp_path, collapse: str | None, name: str):
    torch.manual_seed(0)
    cls = CollapsingMAE if collapse == "during" else MAE
    method = cls(_vit(), decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=False)
    if collapse == "from_init":
        _collapse(method)
    cfg = TrainerConfig(
        max_steps=4, batch_size=8, lr=1e-4, device="cpu", num_workers=0, progress=False, tensorboard=False,
        rank_every=2, rank_samples=32, checkpoint_every=100,
    )  # fmt: skip
    return Trainer(method, RandomImages(), tmp_path / name, cfg).fit()


def test_collapse_monitor_warns_on_a_collapsed_model_and_logs_the_rank(tmp_path, caplog):
    from domainfm.common.runlog import read_metrics

    with caplog.at_level(logging.WARNING, logger="domainfm"):
        healthy = _mae_run(tmp_path, None, "healthy")
    assert healthy.collapsed_at is None and healthy.final_rank > 3  # mean-pooled noise images: ~4.5
    assert not [r for r in caplog.records if "collapsing" in r.message]
    with caplog.at_level(logging.WARNING, logger="domainfm"):
        collapsed = _mae_run(tmp_path, "during", "collapsed")
    assert collapsed.collapsed_at == 2 and collapsed.final_rank < 1.5
    warnings = [r.getMessage() for r in caplog.records if "collapsing" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("step 2: the embeddings are collapsing")
    assert "at step 0)" in warnings[0]  # names the rank at initialisation it fell from
    caplog.clear()  # low from the start and never falling (Point-MAE's mean-pooled tokens start near 1): no warning
    with caplog.at_level(logging.INFO, logger="domainfm"):
        low = _mae_run(tmp_path, "from_init", "low_from_init")
    assert low.collapsed_at is None and low.final_rank < 1.5
    assert not [r for r in caplog.records if "collapsing" in r.getMessage()]
    assert [r for r in caplog.records if "not a collapse" in r.getMessage()]
    rows = [r for r in read_metrics(tmp_path / "collapsed") if "rankme" in r]
    assert [r["step"] for r in rows] == [2, 4] and rows[0]["rankme_max"] == 32
    assert "COLLAPSING since step 2" in collapsed.render()


class CrashingMAE(MAE):
    """Dies in the step after the checkpoint of step 5 (as a killed run)."""

    def after_step(self, ctx):
        super().after_step(ctx)
        if ctx.step == 5:
            raise RuntimeError("killed")


def test_select_by_rank_exports_the_highest_rank_after_select_after_and_survives_a_crash(tmp_path):
    """trainer.select=rankme (MADELEINE's smooth-rank checkpoint choice): ``checkpoints/best_rank.pt`` holds the
    weights of the highest rank measured from ``select_after`` on; a run that dies and resumes chooses the same."""
    from domainfm.common.runlog import read_metrics
    from domainfm.errors import ConfigError

    def run(cls, name):
        torch.manual_seed(0)
        method = cls(_vit(), decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=False)
        cfg = TrainerConfig.from_dict(dict(
            max_steps=8, batch_size=8, lr=1e-3, device="cpu", num_workers=0, progress=False, tensorboard=False,
            rank_every=1, rank_samples=32, checkpoint_every=1, keep_last=20, select="rankme", select_after=0.25,
        ))  # fmt: skip
        return Trainer(method, RandomImages(), tmp_path / name, cfg).fit()

    whole = run(MAE, "whole")
    ranks = {r["step"]: r["rankme"] for r in read_metrics(tmp_path / "whole") if "rankme" in r}
    assert sorted(ranks) == list(range(1, 9))
    chosen = max((s for s in ranks if s >= 2), key=ranks.get)  # 0.25 x 8 steps: from step 2 on
    assert max(ranks, key=ranks.get) == 1  # the highest rank of all came before select_after: not chosen
    best = torch.load(tmp_path / "whole" / "checkpoints" / "best_rank.pt", weights_only=True)
    assert best["step"] == chosen == whole.selected_step and best["rankme"] == pytest.approx(ranks[chosen])
    at_step = torch.load(tmp_path / "whole" / "checkpoints" / f"step_{chosen:08d}.pt", weights_only=True)["model"]
    assert all(torch.equal(best["model"][k], v) for k, v in at_step.items())  # the weights of that step
    assert f"selected       step {chosen} (highest RankMe" in whole.render()
    with pytest.raises(RuntimeError, match="killed"):
        run(CrashingMAE, "crashed")
    resumed = run(MAE, "crashed")
    assert resumed.resumed_from == 5 and (resumed.selected_step, resumed.selected_rank) == (
        whole.selected_step,
        pytest.approx(whole.selected_rank),
    )
    with pytest.raises(ConfigError, match="trainer.select='best'; valid values: last, rankme"):
        TrainerConfig.from_dict({"select": "best"})
    with pytest.raises(ConfigError, match="set trainer.rank_every > 0"):
        TrainerConfig.from_dict({"select": "rankme", "rank_every": 0})

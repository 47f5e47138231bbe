"""Point-MAE step time, domainfm against the official code (Pang et al., ECCV 2022, github Pang-Yatian/Point-MAE,
``models/Point_MAE.py``) at the official ``cfgs/pretrain.yaml`` model (read from the checkout: 64 patches of 32,
384 x 12, 6 heads, decoder 4 x 6, mask 0.6 rand, drop path 0.1, Chamfer-L2), on CPU, in one process: the same
pre-generated batches (32 clouds of 1,024 points from the real ModelNet10 chairs of ../shared/data/three_d: voxel
surfaces, random subsampling, pc_norm), train mode, one step = forward + backward + AdamW (lr 1e-3, wd 0.05), one
step of each side in turn (``paired_steps.compare_steps``); the result is the median of the per-pair time ratios.

    .venv/bin/python benchmarks/point_mae_step_time.py --official /tmp/pmae_scratch/Point-MAE --pairs 20
    .venv/bin/python benchmarks/point_mae_step_time.py --official /tmp/pmae_scratch/Point-MAE --side official  # RSS

``--official`` is a checkout of Pang-Yatian/Point-MAE (never committed here), imported unmodified. The timed
steps use the same optimizer on both sides (torch AdamW, fused, the official ``tools/builder.py`` weight-decay
groups), so they compare the model code; ``--optimizer shipped`` (or ``both``) times each side with its own
instead (domainfm: the engine's ``build_optimizer``, fused AdamW; official: ``build_opti_sche``'s ``optim.AdamW``,
torch's per-tensor loop on CPU); the optimizer steps alone are always timed that way at the end (10 pairs).

Before timing: the two models' parameter counts; the loss of each at its own initialisation on the first batch
(train mode); and the official model's weights copied into domainfm's, both in eval mode (no drop path) with the
official mask: the two losses (equal: domainfm's blocks use ``nn.LayerNorm`` at the official eps 1e-5 since this
benchmark found timm's ``Block`` default of 1e-6 moving the loss by 1 %), then domainfm's again with its LayerNorms
set to 1e-5 explicitly (a no-op now).
``--side`` times one side alone and prints its peak RSS (``ru_maxrss``) before and after stepping.

What the official code imports that this machine lacks is put into ``sys.modules`` before ``models.Point_MAE`` is
imported (the official files are not touched, nothing is monkeypatched; ``.cuda()`` is only called on the
parameter-free loss module, a no-op):

- ``knn_cuda.KNN(k, transpose_mode)``: ``torch.cdist`` + ``topk(largest=False)`` -> ``(dist, idx)`` ``(B, M, k)``
  (``(B, k, M)`` without transpose_mode), the same ops as domainfm's ``grouping.knn``;
- ``pointnet2_ops.pointnet2_utils``: ``furthest_point_sample`` = domainfm's ``grouping.farthest_point_sample``
  (starts at point 0, as pointnet2_ops) as int32; ``gather_operation`` = ``torch.gather`` on ``(B, C, N)``;
- ``extensions.chamfer_dist.ChamferDistanceL2 / L1``: modules calling domainfm's ``chamfer_l2 / chamfer_l1``
  (``mean d1 + mean d2``; ``(mean sqrt d1 + mean sqrt d2) / 2``);
- ``termcolor`` (``utils/checkpoint.py``, log colours) and ``easydict`` (``utils/config.py``), only when not
  installed: ``colored`` returns its text, ``EasyDict`` is a dict with attribute access.

So grouping and the loss cost the same on both sides, and the comparison is about the model code.
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import types
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
import yaml
from domainfm.three_d.grouping import chamfer_l1, chamfer_l2, farthest_point_sample
from domainfm.three_d.point_encoder import create_point_transformer
from domainfm.three_d.point_mae import PointMAE
from paired_steps import compare_steps
from point_grouping import clouds

LR, WD = 1e-3, 0.05


class EasyDict(dict):
    """``easydict.EasyDict`` enough for the official config: a dict (nested dicts converted) with attributes."""

    def __init__(self, d=None, **kw):
        super().__init__()
        for k, v in {**(d or {}), **kw}.items():
            self[k] = EasyDict(v) if isinstance(v, dict) else v

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def __setattr__(self, name, value):
        self[name] = value


class KNN(torch.nn.Module):
    def __init__(self, k: int, transpose_mode: bool = False):
        super().__init__()
        self.k, self.transpose_mode = k, transpose_mode

    def forward(self, ref: torch.Tensor, query: torch.Tensor):
        if not self.transpose_mode:
            ref, query = ref.transpose(1, 2), query.transpose(1, 2)
        dist, idx = torch.cdist(query, ref).topk(self.k, dim=-1, largest=False)
        return (dist, idx) if self.transpose_mode else (dist.transpose(1, 2), idx.transpose(1, 2))


class ChamferDistanceL2(torch.nn.Module):
    def __init__(self, ignore_zeros: bool = False):
        super().__init__()

    def forward(self, xyz1, xyz2):
        return chamfer_l2(xyz1, xyz2)


class ChamferDistanceL1(ChamferDistanceL2):
    def forward(self, xyz1, xyz2):
        return chamfer_l1(xyz1, xyz2)


def _gather_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(features, 2, idx.long()[:, None].expand(-1, features.shape[1], -1))


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def import_official(root: Path):
    """``models.Point_MAE.Point_MAE`` from the checkout at ``root``, with the stand-ins of the module docstring."""
    if not (root / "models" / "Point_MAE.py").is_file():
        raise SystemExit(f"--official {root}: no models/Point_MAE.py (a checkout of Pang-Yatian/Point-MAE)")
    for clash in ("models", "utils", "extensions"):
        if clash in sys.modules:
            raise SystemExit(f"a module named {clash!r} is already imported; it would shadow the official one")
    _module("knn_cuda", KNN=KNN)
    fps = lambda xyz, n: farthest_point_sample(xyz, n).int()
    utils2 = _module("pointnet2_ops.pointnet2_utils", furthest_point_sample=fps, gather_operation=_gather_operation)
    _module("pointnet2_ops", pointnet2_utils=utils2)
    cd = _module("extensions.chamfer_dist", ChamferDistanceL2=ChamferDistanceL2, ChamferDistanceL1=ChamferDistanceL1)
    _module("extensions", chamfer_dist=cd)
    if find_spec("termcolor") is None:
        _module("termcolor", colored=lambda text, *a, **k: text)
    if find_spec("easydict") is None:
        _module("easydict", EasyDict=EasyDict)
    sys.path.insert(0, str(root))
    from models.Point_MAE import Point_MAE

    return Point_MAE


def official_config(root: Path) -> EasyDict:
    with open(root / "cfgs" / "pretrain.yaml") as f:
        cfg = EasyDict(yaml.safe_load(f)["model"])
    tc = cfg.transformer_config
    if tc.encoder_dims != tc.trans_dim or tc.mask_type != "rand":
        raise SystemExit(f"unexpected official config {dict(tc)}")
    return cfg


def domainfm_model(cfg: EasyDict) -> PointMAE:
    tc = cfg.transformer_config
    backbone = create_point_transformer("point_mae", num_group=cfg.num_group, group_size=cfg.group_size,
                                        embed_dim=tc.trans_dim, depth=tc.depth, num_heads=tc.num_heads,
                                        drop_path_rate=tc.drop_path_rate)  # fmt: skip
    return PointMAE(backbone, mask_ratio=tc.mask_ratio, decoder_depth=tc.decoder_depth,
                    decoder_heads=tc.decoder_num_heads, drop_path_rate=tc.drop_path_rate, loss=cfg.loss)  # fmt: skip


def batches(n: int, batch: int, points: int) -> list[torch.Tensor]:
    return list(clouds(n * batch, points, min_points=64).contiguous().split(batch))


def official_groups(model: torch.nn.Module) -> list[dict]:
    """``tools/builder.py`` ``add_weight_decay``: no decay for 1-d, ``.bias`` and ``token`` parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim == 1 or name.endswith(".bias") or "token" in name else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": WD}]


def optimizer(model: torch.nn.Module, side: str, mode: str) -> torch.optim.Optimizer:
    if mode == "same":
        return torch.optim.AdamW(official_groups(model), lr=LR, weight_decay=WD, fused=True)
    if side == "domainfm":
        from domainfm.engine.optim import build_optimizer

        return build_optimizer(model, lr=LR, weight_decay=WD)
    return torch.optim.AdamW(official_groups(model), lr=LR, weight_decay=WD)  # build_opti_sche


def make_step(model: torch.nn.Module, side: str, opt: torch.optim.Optimizer, data: list[torch.Tensor]):
    loss_of = (lambda x: model({"points": x})["loss"]) if side == "domainfm" else model
    model.train()

    def step(i: int) -> None:
        loss_of(data[i % len(data)]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def official_to_domainfm(state: dict) -> dict:
    renames = [
        ("MAE_encoder.encoder.", "encoder.patch_embed."),
        ("MAE_encoder.blocks.blocks.", "encoder.blocks."),
        ("MAE_encoder.", "encoder."),
        ("MAE_decoder.blocks.", "decoder."),
        ("MAE_decoder.norm.", "decoder_norm."),
        ("increase_dim.0.", "increase_dim."),
    ]
    out = {}
    for k, v in state.items():
        for old, new in renames:
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        out[k] = v
    return out


def check_losses(ours: PointMAE, theirs: torch.nn.Module, x: torch.Tensor) -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())
    print(f"parameters: domainfm {count(ours):,}, official {count(theirs):,}")
    torch.manual_seed(0)
    np.random.seed(0)
    with torch.no_grad():
        own = float(ours.train()({"points": x})["loss"]), float(theirs.train()(x))
    print(f"loss at own init, first batch, train mode: domainfm {own[0]:.5f}, official {own[1]:.5f}")
    copied = copy.deepcopy(ours)
    copied.load_state_dict(official_to_domainfm(theirs.state_dict()), strict=True)
    with torch.no_grad():
        np.random.seed(1)
        ref = float(theirs.eval()(x))
        np.random.seed(1)  # the official mask again (drawn from numpy's global state)
        mask = theirs.MAE_encoder._mask_center_rand(torch.zeros(x.shape[0], theirs.num_group, 3))
        got = float(copied.eval()({"points": x, "mask": mask})["loss"])
        for m in copied.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = 1e-5  # the official nn.LayerNorm's; timm's Block builds its norms with 1e-6
        same_eps = float(copied({"points": x, "mask": mask})["loss"])
    print(f"official weights + mask, eval mode: official {ref:.6f}, domainfm {got:.6f} (rel. diff {got / ref - 1:.1e}),"
          f" domainfm with LayerNorm eps 1e-5 {same_eps:.6f} (rel. diff {same_eps / ref - 1:.1e})")  # fmt: skip
    ours.train(), theirs.train()


def peak_rss(side: str, build, data: list[torch.Tensor], steps: int) -> None:
    model = build()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = make_step(model, side, optimizer(model, side, "same"), data)
    for i in range(steps):
        step(i)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{side}: peak RSS {before:.0f} MiB after building, {after:.0f} MiB after {steps} steps "
          f"(+{after - before:.0f} MiB)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="a checkout of Pang-Yatian/Point-MAE")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--optimizer", choices=["same", "shipped", "both"], default="same")
    ap.add_argument("--side", choices=["domainfm", "official"], help="time this side alone, print its peak RSS")
    args = ap.parse_args()
    Point_MAE = import_official(args.official.resolve())
    cfg = official_config(args.official.resolve())
    npoints = int(yaml.safe_load((args.official / "cfgs" / "pretrain.yaml").read_text())["npoints"])
    data = batches(3, args.batch, npoints)
    print(f"official config: {dict(cfg.transformer_config)}, group_size {cfg.group_size}, num_group "
          f"{cfg.num_group}, loss {cfg.loss}; {len(data)} batches of {args.batch} x {npoints} points; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    torch.manual_seed(0)
    if args.side:
        build = (lambda: domainfm_model(cfg)) if args.side == "domainfm" else (lambda: Point_MAE(cfg))
        peak_rss(args.side, build, data, 2 + args.pairs)
        return
    ours, theirs = domainfm_model(cfg), Point_MAE(cfg)
    check_losses(ours, theirs, data[0])
    for mode in ("same", "shipped") if args.optimizer == "both" else (args.optimizer,):
        print(f"-- {'same optimizer (fused AdamW, official groups)' if mode == 'same' else 'as shipped'}")
        m1, m2 = copy.deepcopy(ours), copy.deepcopy(theirs)
        ours_step = make_step(m1, "domainfm", optimizer(m1, "domainfm", mode), data)
        compare_steps(
            ours_step, make_step(m2, "official", optimizer(m2, "official", mode), data), "official", args.pairs
        )
    print("-- optimizer step alone, as shipped (domainfm build_optimizer: fused; official: per-tensor loop)")
    steps = []
    for side, model in (("domainfm", ours), ("official", theirs)):
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        steps.append(optimizer(model, side, "shipped").step)
    compare_steps(lambda i: steps[0](), lambda i: steps[1](), "official", 10)


if __name__ == "__main__":
    main()

"""I2P-MAE: the hierarchical encoder's layers are the official ones (models/I2P_MAE.py H_Encoder, modules.py
Token_Embed), one step's 3D and 2D losses equal an independent, per-cloud computation of the official forward
(hierarchical grouping, the saliency read from the upsampled attention maps, multi-scale masking, unpadded encoding
level by level, decoder with token propagation, Chamfer-L2 of the masked tokens' neighbours, MSE to the upsampled
2D features at every visible neighbour in 3 views), and `three_d/i2p_mae_tiny` pretrains on real ModelNet10
shapes with a locally made 2D guide (random weights: no hub download), exports, reloads and resumes exactly."""

import gzip
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from domainfm.backbones.loading import load_backbone
from domainfm.cli import compose_config
from domainfm.engine.export import export_backbone
from domainfm.errors import ConfigError
from domainfm.three_d import i2p_mae as i2p
from domainfm.three_d.depth_projection import VIEWS, project_depth, to_model_input
from domainfm.three_d.hierarchical_encoder import HierarchicalPointEncoder, create_hierarchical_encoder
from domainfm.three_d.image_guidance import attention_and_features
from domainfm.three_d.point_encoder import PointBackbone
from safetensors.torch import load_file

from tests.conftest import SHARED_DATA, assert_resumes_exactly, pretrain_in_process
from tests.three_d.test_depth_projection import _official_view
from tests.three_d.test_grouping import _fps_reference


def _guide(size: int = 32, patch: int = 8) -> torch.nn.Module:
    torch.manual_seed(5)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size, patch_size=patch, embed_dim=16,
                             depth=2, num_heads=2, num_classes=0)  # fmt: skip


def test_encoder_and_decoder_layers_are_the_official_ones(tmp_path):
    enc = create_hierarchical_encoder("i2p_mae")
    assert enc.num_groups == [512, 256, 64] and enc.group_sizes == [16, 8, 8] and enc.dims == [96, 192, 384]
    convs = lambda m: [(c.in_channels, c.out_channels) for c in m.modules() if isinstance(c, torch.nn.Conv1d)]
    assert convs(enc.token_embed[0]) == [(3, 128), (128, 256), (512, 512), (512, 96)]
    assert convs(enc.token_embed[1]) == [(96, 96), (96, 96), (192, 192), (192, 192)]
    assert [len(level) for level in enc.levels] == [5, 5, 5]
    assert enc.levels[2][0].attn.num_heads == 6 and enc.levels[0][0].attn.qkv.bias is None
    assert [m.out_features for m in enc.pos_embeds[1] if isinstance(m, torch.nn.Linear)] == [192, 192]
    assert enc.levels[2][-1].drop_path1.drop_prob == pytest.approx(0.1)  # 0 -> 0.1 over all 15 blocks
    m = i2p.I2PMAE(enc, _guide())
    assert m.target_level == 1 and [len(s) for s in m.decoder] == [1, 1]
    assert convs(m.token_prop[0]) == [(192 + 384, 192), (192, 192), (192, 192)]
    assert m.head_3d.out_features == 3 * 8 and m.head_2d.out_features == 3 * 16 * 8  # k = 8, F = 16 (the guide)
    assert not any(k.startswith("guide.") for k in m.state_dict())  # frozen, reloaded from its source
    assert m.load_state_dict(m.state_dict()).missing_keys == []
    with pytest.raises(ValueError, match="top 2 encoder widths"):
        i2p.I2PMAE(enc, _guide(), decoder_dims=(384, 96))
    with pytest.raises(ConfigError, match="method.guide .*no_such_guide"):
        i2p.I2PMAE(enc, str(tmp_path / "no_such_guide"))
    cfg = compose_config("pretrain", ["recipe=three_d/i2p_mae", "data.root=x"])  # the paper recipe's values
    assert cfg.method.mask_ratio == 0.8 and cfg.method.image_size == 224 and cfg.preprocess.n_points == 2048
    assert (cfg.trainer.lr, cfg.trainer.weight_decay, cfg.data.batch_size) == (1e-3, 0.05, 64)
    assert "clip" in cfg.method.guide and list(cfg.backbone.local_radius) == [0, 0, 0]


def _levels_reference(cloud: np.ndarray, groups, sizes):
    """Group_v2 level by level: FPS of the level below, the k nearest (stable order), centred and absolute."""
    out, source = [], cloud
    for g, k in zip(groups, sizes):
        centres = source[_fps_reference(source, g)]
        index = np.argsort(((source[None] - centres[:, None]) ** 2).sum(-1), axis=1, kind="stable")[:, :k]
        out.append({"centres": centres, "index": index, "abs": source[index], "rel": source[index] - centres[:, None]})
        source = centres
    return out


def _read(maps: torch.Tensor, coords: np.ndarray, cloud: np.ndarray, size: int) -> np.ndarray:
    """The official I2P: bicubic upsampling of each view's map to size x size, read at the points' pixels."""
    up = F.interpolate(maps, size=(size, size), mode="bicubic").reshape(3, maps.shape[1], -1).numpy()
    reads = []
    for v, axes in enumerate(VIEWS):
        _, lo, grid, shift = _official_view(cloud[:, list(axes)], size)
        pix = np.floor((coords[:, list(axes)[:2]] - lo) / grid) + 1 + shift
        reads.append(up[v][:, (pix[:, 0] * size + pix[:, 1]).astype(int)].T)
    return np.stack(reads)  # (3, M, C)


def _reference_losses(m: i2p.I2PMAE, points: torch.Tensor, top_visible: np.ndarray, size: int):
    enc = m.encoder
    losses_3d, preds_2d, targets_2d, saliencies = [], [], [], []
    images, _ = project_depth(points, size)
    with torch.no_grad():
        att, feats = attention_and_features(m.guide, to_model_input(images))
    for b, cloud in enumerate(points.numpy()):  # float32, as the official code on the GPU
        lv = _levels_reference(cloud, enc.num_groups, enc.group_sizes)
        saliencies.append(_read(att[3 * b : 3 * b + 3, None], lv[2]["centres"], cloud, size)[..., 0].mean(0))
        vis = [None, None, top_visible[b]]
        for i in (2, 1):  # a token is visible when it is a neighbour of a visible token one level up
            vis[i - 1] = np.zeros(enc.num_groups[i - 1], bool)
            vis[i - 1][lv[i]["index"][vis[i]].ravel()] = True
        t = lambda a: torch.tensor(a, dtype=torch.float32)
        with torch.no_grad():
            outs, below = [], None
            for i in range(3):  # each level on its visible tokens only, no padding
                x_in = t(lv[0]["rel"])[None] if i == 0 else below[torch.from_numpy(lv[i]["index"])][None]
                tokens = enc.token_embed[i](x_in)[0]
                x = tokens[torch.from_numpy(vis[i])][None]
                pos = enc.pos_embeds[i](t(lv[i]["centres"][vis[i]]))[None]
                for block in enc.levels[i]:
                    x = block(x + pos)
                below = tokens.clone()
                below[torch.from_numpy(vis[i])] = x[0]
                outs.append(enc.norms[i](x)[0])
            c2 = lv[2]["centres"]
            order = np.concatenate([np.flatnonzero(vis[2]), np.flatnonzero(~vis[2])])
            x = torch.cat([outs[2], m.mask_token[0].expand(int((~vis[2]).sum()), -1)])[None]
            pos = m.decoder_pos[0](t(c2[order]))[None]
            for block in m.decoder[0]:
                x = block(x + pos)
            c1, coarse = lv[1]["centres"], c2[order]
            d2 = ((c1[:, None] - coarse[None]) ** 2).sum(-1)
            near = np.argsort(d2, axis=1, kind="stable")[:, :3]
            w = 1 / (np.take_along_axis(d2, near, 1) + 1e-8)
            w = w / w.sum(1, keepdims=True)
            interpolated = (x[0].numpy()[near] * w[..., None]).sum(1)
            fine = torch.zeros(len(c1), outs[1].shape[1])
            fine[torch.from_numpy(vis[1])] = outs[1]
            prop = m.token_prop[0]
            y = prop.extraction(prop.fuse(torch.cat([fine, t(interpolated)], 1).T[None]))[0].T[None]
            pos = m.decoder_pos[1](t(c1))[None]
            for block in m.decoder[1]:
                y = block(y + pos)
            y = m.decoder_norm(y)[0]
            k = enc.group_sizes[1]
            rec = m.head_3d(y[torch.from_numpy(~vis[1])]).reshape(-1, k, 3).numpy()
            for pred, true in zip(rec, lv[1]["rel"][~vis[1]]):
                d = ((pred[:, None] - true[None]) ** 2).sum(-1)
                losses_3d.append((d.min(1), d.min(0)))
            preds_2d.append(m.head_2d(y[torch.from_numpy(vis[1])]).numpy())
            fmap = feats[3 * b : 3 * b + 3]
            read = _read(fmap, lv[1]["abs"].reshape(-1, 3), cloud, size)  # (3, G k, F)
            per = read.transpose(1, 0, 2).reshape(len(c1), k, -1)  # views concatenated per neighbour
            targets_2d.append(per[vis[1]].reshape(int(vis[1].sum()), -1))
    d1 = np.concatenate([a for a, _ in losses_3d])
    d2 = np.concatenate([b for _, b in losses_3d])
    loss_2d = ((np.concatenate(preds_2d) - np.concatenate(targets_2d)) ** 2).mean()
    return float(d1.mean() + d2.mean()), float(loss_2d), np.stack(saliencies)


def test_one_step_is_the_official_forward_computed_per_cloud(monkeypatch):
    torch.manual_seed(0)
    enc = HierarchicalPointEncoder(num_groups=(16, 8, 4), group_sizes=(4, 3, 3), dims=(8, 16, 32), depths=(1, 1, 1),
                                   num_heads=2, drop_path_rate=0.0, pointnet_widths=(8, 16, 32))  # fmt: skip
    m = i2p.I2PMAE(enc, _guide(), decoder_dims=(32, 16), decoder_heads=2, drop_path_rate=0.0, image_size=32).eval()
    for module in m.modules():  # BatchNorm in eval mode: per-cloud and batched statistics agree
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
    points = torch.randn(3, 48, 3)
    top_visible = np.zeros((3, 4), bool)
    top_visible[[0, 1, 2], [0, 3, 1]] = True  # int(0.8 * 4) = 3 masked per cloud
    seen = {}

    def fixed_mask(saliency, ratio):
        seen["saliency"], seen["ratio"] = saliency.clone(), ratio
        return torch.from_numpy(~top_visible)

    monkeypatch.setattr(i2p, "guided_mask", fixed_mask)
    with torch.no_grad():
        out = m({"points": points})
    loss_3d, loss_2d, saliency = _reference_losses(m, points, top_visible, 32)
    np.testing.assert_allclose(seen["saliency"].numpy(), saliency, rtol=1e-4, atol=1e-7)
    assert seen["ratio"] == 0.8
    assert float(out["loss_3d"]) == pytest.approx(loss_3d, rel=1e-4)
    assert float(out["loss_2d"]) == pytest.approx(loss_2d, rel=1e-4)
    assert float(out["loss"]) == pytest.approx(loss_3d + loss_2d, rel=1e-4)
    monkeypatch.undo()
    m.train()
    out = m({"points": points})
    out["loss"].backward()
    assert enc.token_embed[0].first_conv[0].weight.grad.abs().sum() > 0 and m.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.guide.parameters()) and not m.guide.training


@pytest.fixture
def monitors(tmp_path):
    with gzip.open(SHARED_DATA / "three_d" / "modelnet10_vox32_monitor.npy.gz") as f:
        grids = np.load(f)[:24]  # real ModelNet10 monitors, voxelised
    path = tmp_path / "monitors.npy"
    np.save(path, grids)
    return path


def test_i2p_mae_tiny_pretrains_exports_and_resumes_exactly(monitors, tmp_path):
    preprocess = {"in_chans": 3, "img_size": 56, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    guide = export_backbone(_guide(56, 8), tmp_path / "guide", preprocess)
    common = [
        "recipe=three_d/i2p_mae_tiny", f"data.root={monitors}", "data.batch_size=4", "data.num_workers=0",
        "trainer.progress=false", "trainer.tensorboard=false", "trainer.checkpoint_every=2", "trainer.rank_every=0",
        "preprocess.n_points=256", "backbone.num_groups=[32,16,8]", f"method.guide={guide}", "method.image_size=56",
    ]  # fmt: skip
    once = tmp_path / "once"
    out = pretrain_in_process([*common, f"run_dir={once}", "trainer.max_steps=4"])
    assert out["steps"] == 4 and np.isfinite(out["final_loss"])
    config = json.loads((once / "export" / "config.json").read_text())
    assert config["model_class"] == "domainfm.three_d.hierarchical_encoder:HierarchicalPointEncoder"
    assert config["pretrained_cfg"]["input_size"] == [256, 3]
    model = load_backbone(once).eval()
    assert isinstance(model, PointBackbone) and model(torch.randn(2, 256, 3)).shape == (2, 384)
    assert model.forward_features(torch.randn(2, 256, 3)).shape == (2, 1 + 8, 192)  # [max | top tokens]
    state = load_file(str(once / "export" / "model.safetensors"))
    assert all(k.startswith(("token_embed.", "pos_embeds.", "levels.", "norms.")) for k in state)
    checkpoint = torch.load(once / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert not any("guide." in k for k in checkpoint["model"])  # the 2D model is not copied into checkpoints
    assert_resumes_exactly(common, tmp_path / "twice", state)  # killed after step 2, same command again

"""Point-MAE: the encoder's layers are the official ones, one training step's loss equals an independent
computation of the official forward (models/Point_MAE.py: visible tokens in order, positions added at every block,
[visible | mask tokens] to the decoder, LayerNorm on the mask outputs, Conv1d to K x 3, Chamfer-L2), and
`three_d/point_mae_tiny` pretrains on real ModelNet10 voxel shapes, exports, reloads and resumes exactly."""

import gzip
import json

import numpy as np
import pytest
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.three_d.point_encoder import PointTransformer, create_point_transformer
from domainfm.three_d.point_mae import PointMAE
from safetensors.torch import load_file

from tests.conftest import SHARED_DATA, assert_resumes_exactly, pretrain_in_process
from tests.three_d.test_grouping import _fps_reference


def test_encoder_layers_are_point_maes():
    enc = create_point_transformer("point_mae")
    convs = [m for m in enc.patch_embed.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 128), (128, 256), (512, 512), (512, 384)]
    assert len(enc.blocks) == 12 and enc.blocks[0].attn.qkv.bias is None and enc.blocks[0].attn.num_heads == 6
    assert enc.blocks[0].norm1.eps == enc.blocks[0].norm2.eps == 1e-5  # nn.LayerNorm, as the official blocks
    assert [m.out_features for m in enc.pos_embed if isinstance(m, torch.nn.Linear)] == [128, 384]
    assert enc.num_group == 64 and enc.group_size == 32
    mae = PointMAE(enc)
    assert mae.num_masked() == 38 and len(mae.decoder) == 4 and mae.increase_dim.out_channels == 96


def _reference_loss(m: PointMAE, points: torch.Tensor, mask: torch.Tensor) -> float:
    enc, g, k = m.encoder, m.encoder.num_group, m.encoder.group_size
    neigh, cent = [], []
    for cloud in points.numpy():
        centres = cloud[_fps_reference(cloud, g)]
        order = np.argsort(((cloud[None] - centres[:, None]) ** 2).sum(-1), axis=1, kind="stable")[:, :k]
        neigh.append(cloud[order] - centres[:, None])
        cent.append(centres)
    neigh, cent = torch.tensor(np.stack(neigh)), torch.tensor(np.stack(cent))
    total, preds, truths = [], [], []
    with torch.no_grad():
        tokens, pos = enc.patch_embed(neigh), enc.pos_embed(cent)
        for b in range(len(points)):
            vis, hid = ~mask[b], mask[b]
            x, p = tokens[b][vis][None], pos[b][vis][None]
            for block in enc.blocks:
                x = block(x + p)
            x = enc.norm(x)
            n = int(hid.sum())
            full = torch.cat([x, m.mask_token.expand(1, n, -1)], 1)
            dpos = torch.cat([m.decoder_pos_embed(cent[b][vis]), m.decoder_pos_embed(cent[b][hid])])[None]
            for block in m.decoder:
                full = block(full + dpos)
            out = m.decoder_norm(full[:, -n:])[0]
            w, bias = m.increase_dim.weight[:, :, 0], m.increase_dim.bias
            preds.append((out @ w.T + bias).reshape(n, k, 3).numpy())
            truths.append(neigh[b][hid].numpy())
    for pred, true in zip(np.concatenate(preds), np.concatenate(truths)):
        d = ((pred[:, None] - true[None]) ** 2).sum(-1)
        total.append((d.min(1), d.min(0)))
    d1 = np.concatenate([t[0] for t in total])
    d2 = np.concatenate([t[1] for t in total])
    return float(d1.mean() + d2.mean())


def test_one_step_loss_equals_the_official_forward_computed_independently():
    torch.manual_seed(0)
    enc = PointTransformer(num_group=8, group_size=6, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)
    m = PointMAE(enc, mask_ratio=0.6, decoder_depth=2, decoder_heads=2, drop_path_rate=0.0).eval()
    points = torch.randn(3, 64, 3)
    mask = m.random_mask(3, torch.Generator().manual_seed(1))
    assert (mask.sum(1) == 4).all()  # int(0.6 * 8) per cloud
    with torch.no_grad():
        loss = m({"points": points, "mask": mask})["loss"].item()
    assert loss == pytest.approx(_reference_loss(m, points, mask), rel=1e-5)
    m.train()
    out = m({"points": points, "mask": mask})
    out["loss"].backward()
    assert m.mask_token.grad is not None and enc.patch_embed.first_conv[0].weight.grad.abs().sum() > 0


@pytest.fixture
def chairs(tmp_path):
    with gzip.open(SHARED_DATA / "three_d" / "modelnet10_vox32_chair.npy.gz") as f:
        grids = np.load(f)[:40]  # real ModelNet10 chairs, voxelised
    path = tmp_path / "chairs.npy"
    np.save(path, grids)
    return path


def test_point_mae_tiny_pretrains_exports_and_resumes_exactly(chairs, tmp_path):
    common = [
        "recipe=three_d/point_mae_tiny", f"data.root={chairs}", "data.batch_size=8", "data.num_workers=0",
        "trainer.progress=false", "trainer.tensorboard=false", "trainer.checkpoint_every=2", "trainer.rank_every=0",
        "preprocess.n_points=128",
    ]  # fmt: skip
    once = tmp_path / "once"
    out = pretrain_in_process([*common, f"run_dir={once}", "trainer.max_steps=4"])
    assert out["steps"] == 4 and np.isfinite(out["final_loss"])
    config = json.loads((once / "export" / "config.json").read_text())
    assert config["architecture"] == "domainfm_point_transformer"
    assert config["model_class"] == "domainfm.three_d.point_encoder:PointTransformer"
    assert config["pretrained_cfg"]["input_size"] == [128, 3] and config["domainfm"]["n_points"] == 128
    model = load_backbone(once).eval()
    assert isinstance(model, PointTransformer) and model(torch.randn(2, 128, 3)).shape == (2, 384)
    state = load_file(str(once / "export" / "model.safetensors"))
    assert all(k.startswith(("patch_embed.", "pos_embed.", "blocks.", "norm.")) for k in state)

    assert_resumes_exactly(common, tmp_path / "twice", state)  # killed after step 2, same command again

"""NeRF-MAE: the loss equals the official forward_loss computed independently in its patchified layout, the input
is the official loader's (alpha from sigma, zero padding at the high end with its mask), the block masking and the
quarter turn are the official ones, and `three_d/nerf_mae_tiny` pretrains on a real grid fitted to the lego views
plus synthetic scenes (labelled synthetic: no other radiance grid is here), skips a corrupt file, exports a 4-channel
3D ViT and resumes exactly."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.backbones.vit3d import VisionTransformer3D, create_vit3d
from domainfm.errors import DataError
from domainfm.three_d import nerf_mae as nm
from domainfm.three_d.synthetic_grids import sigma_for_alpha, write_synthetic_grids
from safetensors.torch import load_file

from tests.conftest import assert_resumes_exactly, pretrain_in_process


def _official_loss(x, pred, pad, token_mask, p):
    """forward_loss of SwinTransformer_MAE3D_New, in its layout: patchify_3d -> (N, g, g, g, p^3, C)."""
    n, r = x.shape[0], x.shape[2]
    g = r // p

    def patchify(t):  # (N, C, R, R, R) -> (N, g, g, g, p^3, C)
        t = t.reshape(t.shape[0], t.shape[1], g, p, g, p, g, p)
        return t.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(t.shape[0], g, g, g, p**3, t.shape[1])

    target, mask_batch, pred = patchify(x), patchify(pad[:, None].float()), patchify(pred)
    mask_patches = token_mask.reshape(n, g, g, g, 1).int()
    mask_remove = (mask_batch.squeeze(-1).int() * mask_patches).unsqueeze(-1)
    target_rgb, target_alpha = target[..., :3], target[..., 3].unsqueeze(-1)
    pred_rgb, pred_alpha = pred[..., :3], torch.sigmoid(pred[..., 3].unsqueeze(-1))
    mask = target_alpha > 0.01
    loss_rgb = ((pred_rgb - target_rgb) ** 2 * mask).sum() / mask.sum()
    loss_alpha = ((pred_alpha - target_alpha) ** 2 * mask_remove).sum() / mask_remove.sum()
    return float(loss_rgb + loss_alpha), float(loss_rgb), float(loss_alpha)


def test_the_loss_is_the_official_forward_loss():
    torch.manual_seed(0)
    r, p = 16, 4
    x = torch.rand(2, 4, r, r, r)
    x[:, 3] = torch.where(torch.rand(2, r, r, r) < 0.6, torch.zeros(()), x[:, 3])  # empty voxels
    pad = torch.ones(2, r, r, r, dtype=torch.bool)
    pad[0, 12:], pad[1, :, 10:] = False, False
    x = x * pad[:, None]
    token_mask = torch.rand(2, (r // p) ** 3) < 0.75
    pred = torch.randn(2, 4, r, r, r)
    ours = nm.nerf_mae_loss(pred, x, pad, nm.token_mask_to_voxels(token_mask, (4, 4, 4), p))
    total, rgb, alpha = _official_loss(x, pred, pad, token_mask, p)
    assert float(ours["loss"]) == pytest.approx(total, rel=1e-6)
    assert float(ours["loss_rgb"]) == pytest.approx(rgb, rel=1e-6)
    assert float(ours["loss_alpha"]) == pytest.approx(alpha, rel=1e-6)


def test_input_padding_masks_and_turns_follow_the_official_code():
    sigma = np.array([sigma_for_alpha(0.5), -30.0, 30.0], np.float32)  # alpha 0.5, ~0, clipped to 1
    grid = np.zeros((3, 2, 1, 4), np.float32)
    grid[..., 3] = sigma[:, None, None]
    grid[..., 0] = 0.25
    x = nm.grid_input(grid)
    assert x.shape == (4, 3, 2, 1)
    assert np.allclose(x[3, :, 0, 0], [0.5, 0.0, 1.0], atol=1e-6) and np.allclose(x[0], 0.25)
    padded, real = nm.pad_grid(torch.from_numpy(x), 4)
    assert padded.shape == (4, 4, 4, 4) and int(real.sum()) == 6 and bool(real[:3, :2, :1].all())
    assert torch.equal(padded[:, :3, :2, :1], torch.from_numpy(x)) and float(padded[:, 3:].abs().sum()) == 0

    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([nm.block_mask((5, 4, 4), block=2, ratio=0.75, generator=gen) for _ in range(400)])
    blocks = masks.reshape(400, 5, 4, 4)[:, :4].reshape(400, 2, 2, 2, 2, 2, 2)
    assert bool((blocks == blocks[:, :, :1, :, :1, :, :1]).all())  # each 2^3 block masked or kept whole
    assert not bool(masks.reshape(400, 5, 4, 4)[:, 4].any())  # a partial block at the edge: never masked
    assert float(blocks[:, :, 0, :, 0, :, 0].float().mean()) == pytest.approx(0.75, abs=0.03)
    assert len({int(m.sum()) for m in masks}) > 1  # Bernoulli per block, not a fixed count

    a = torch.arange(2 * 3 * 3 * 2, dtype=torch.float32).reshape(2, 3, 3, 2)
    assert torch.equal(a.transpose(1, 2).flip(1), torch.rot90(a, 1, dims=(1, 2)))  # the dataset's turn about z


def test_a_grid_larger_than_the_model_is_scaled_down_and_bad_files_are_named(tmp_path):
    big = torch.rand(4, 64, 32, 16)
    small = nm.fit_grid(big, 32)
    assert small.shape == (4, 32, 16, 8) and torch.allclose(small.mean(), big.mean(), atol=1e-6)
    assert nm.fit_grid(small, 32) is small
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "nokey.npz", grid=np.zeros((2, 2, 2, 4)))
    with pytest.raises(DataError, match=r"bad\.npz: unreadable grid"):
        nm.read_grid(tmp_path / "bad.npz")
    with pytest.raises(DataError, match=r"nokey\.npz: no 'rgbsigma' array \(has: grid\)"):
        nm.read_grid(tmp_path / "nokey.npz")


def test_the_method_reads_masked_tokens_and_decodes_every_voxel():
    vit = create_vit3d("vit3d_tiny", img_size=16, patch_size=4, in_chans=4, depth=1)
    method = nm.NeRFMAE(vit, decoder_channels=8)
    x = torch.rand(2, 4, 16, 16, 16)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, :32] = True
    pred = method.predict(x, mask)
    assert pred.shape == (2, 4, 16, 16, 16)
    x2 = x.clone()
    x2[:, :, :8] = torch.rand(2, 4, 8, 16, 16)  # change only voxels under masked tokens (the first 32 = x < 8)
    assert torch.allclose(method.predict(x2, mask), pred, atol=1e-6)  # the encoder does not see masked voxels
    with pytest.raises(ValueError, match="in_chans=4"):
        nm.NeRFMAE(create_vit3d("vit3d_tiny", img_size=16, patch_size=4, in_chans=1, depth=1))


@pytest.fixture
def grids(tmp_path, shared_data):
    """Synthetic scenes (labelled synthetic) plus a real grid fitted to the lego views, and one corrupt file."""
    from domainfm.three_d import radiance_grid as rg

    root = tmp_path / "grids"
    write_synthetic_grids(root, 6, size=24, seed=1, labels=False)
    views = rg.read_posed_images(shared_data / "three_d" / "nerf_synthetic_lego_200px")
    views = rg.PosedImages(views.images[:, ::4, ::4].contiguous(), views.poses, views.focal / 4)
    params = rg.FitParams(resolutions=(16, 40), iterations=30, rays=512, samples_per_voxel=1.0, holdout=0)
    rg.fit_radiance_grid(views, params, tmp_path / "lego", progress=False)
    shutil.copy(tmp_path / "lego" / "rgbsigma.npz", root / "lego.npz")  # larger than 32: scaled to fit
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 truncated")
    return root


def test_nerf_mae_tiny_pretrains_exports_resumes_exactly_and_is_probed(grids, tmp_path, monkeypatch):
    common = [
        "recipe=three_d/nerf_mae_tiny", f"data.root={grids}", "data.batch_size=4", "data.num_workers=0",
        "trainer.progress=false", "trainer.tensorboard=false", "trainer.checkpoint_every=2", "trainer.rank_every=0",
        "backbone.depth=2",
    ]  # fmt: skip
    once = tmp_path / "once"
    out = pretrain_in_process([*common, f"run_dir={once}", "trainer.max_steps=4"])
    assert out["steps"] == 4 and math.isfinite(out["final_loss"]) and "corrupt.npz" in str(out["skipped_files"])
    config = json.loads((once / "export" / "config.json").read_text())
    assert config["architecture"] == "domainfm_vit3d" and config["pretrained_cfg"]["input_size"] == [4, 32, 32, 32]
    assert config["domainfm"]["alpha"] == "clip(1 - exp(-exp(sigma) / 100), 0, 1)"
    model = load_backbone(once).eval()
    assert isinstance(model, VisionTransformer3D) and model(torch.rand(1, 4, 32, 32, 32)).shape == (1, 192)
    assert (once / "report" / "reconstructions.png").is_file()
    state = load_file(str(once / "export" / "model.safetensors"))

    assert_resumes_exactly(common, tmp_path / "twice", state)  # killed after step 2, same command again

    # the voxel probe (NeRF-MAE's semantic voxel task, frozen) through domainfm evaluate, beside random init
    from domainfm.commands.demo import random_init_export
    from domainfm.three_d.commands.voxel_probe import evaluate

    from tests.conftest import compose

    labeled = tmp_path / "labeled"
    write_synthetic_grids(labeled, 8, size=24, seed=2, labels=True)
    baseline = random_init_export(once, tmp_path / "random" / "export").parent
    results = evaluate(compose("evaluate", [f"data.grids={labeled}", f"backbone=[{once},{baseline}]",
                                            f"run_dir={tmp_path / 'probe'}", "linear.Cs=[0.1,1.0]"]))  # fmt: skip
    assert list(results) == ["once", "random"]
    for r in results.values():
        assert r["scenes"] == {"train": 4, "val": 2, "test": 2} and 0 <= r["metrics"]["miou"] <= 1
        assert r["ci"]["miou"][0] <= r["metrics"]["miou"] <= r["ci"]["miou"][1] and r["C"] in (0.1, 1.0)
    splits = (tmp_path / "probe" / "splits.csv").read_text().splitlines()
    assert splits[0] == "scene,split" and len(splits) == 9
    assert "| once |" in (tmp_path / "probe" / "summary.md").read_text()
    from domainfm.three_d.commands import voxel_probe

    grey = create_vit3d("vit3d_tiny", img_size=24, patch_size=4, in_chans=1, depth=1)
    grey.pretrained_cfg = {"input_size": [1, 24, 24, 24]}  # a CT encoder, say
    with pytest.raises(DataError, match=r"grey-ct is not a radiance-grid encoder \(RGB \+ alpha 3D ViT\)"):
        monkeypatch.setattr(voxel_probe, "load_backbone", lambda source: grey)
        voxel_probe.open_grid_encoder("grey-ct")


def test_voxel_metrics_are_miou_macc_and_allacc_of_the_confusion():
    from domainfm.three_d.voxel_probe import confusion, segmentation_metrics

    y = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3])
    p = np.array([1, 1, 2, 2, 2, 3, 1, 3, 3])
    cm = confusion(y, p, 4)[1:, 1:]
    m = segmentation_metrics(cm)
    # IoU: class 1 TP 2 / (3 + 3 - 2) = 0.5, class 2 2 / (2 + 3 - 2) = 2/3, class 3 3 / (4 + 3 - 3) = 0.75
    assert m["miou"] == pytest.approx((0.5 + 2 / 3 + 0.75) / 3)
    assert m["macc"] == pytest.approx((2 / 3 + 1 + 3 / 4) / 3) and m["allacc"] == pytest.approx(7 / 9)


def test_the_paper_recipe_composes_with_the_official_values(tmp_path):
    from tests.conftest import compose

    cfg = compose("pretrain", ["recipe=three_d/nerf_mae", f"data.root={tmp_path}", f"run_dir={tmp_path / 'run'}"])
    assert cfg.preprocess.img_size == 160 and cfg.backbone.patch_size * cfg.data.dataset.mask_block == 16
    assert cfg.data.dataset.mask_ratio == 0.75 and cfg.data.batch_size == 32
    assert (cfg.trainer.lr, cfg.trainer.weight_decay, cfg.trainer.clip_grad) == (1e-4, 1e-3, 0.1)
    assert cfg.trainer.warmup_steps == 0.3 and cfg.method._target_ == "domainfm.three_d.nerf_mae.NeRFMAE"

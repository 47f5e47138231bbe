"""ViT backbones: sizes and channels, the masking wrapper, gradient checkpointing, 3D ViT, loading weights."""

import json
import shutil

import pytest
import torch
from domainfm.backbones.loading import adapt_channels, load_backbone
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.backbones.vit import create_vit
from domainfm.backbones.vit3d import vit3d_tiny
from domainfm.data.masking import BlockPatchMask, IBOTMask, RandomPatchMask
from domainfm.engine.export import export_backbone
from domainfm.errors import ConfigError
from domainfm.methods.mae import MAE
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed


def _vit(**kw):
    torch.manual_seed(0)
    return create_vit(**{"img_size": 32, "patch_size": 8, "depth": 2, **kw}).eval()


def test_channels_sizes_and_registers():
    vit = _vit(in_chans=13, reg_tokens=4)
    assert vit.num_prefix_tokens == 5
    assert vit(torch.randn(2, 13, 32, 32)).shape == (2, 192)
    assert vit(torch.randn(2, 13, 16, 24)).shape == (2, 192)  # dynamic size: global and local crops alike


def test_drop_mode_handles_variable_visible_counts_exactly():
    vit = _vit(reg_tokens=2)
    enc = MaskedViT(vit)
    x = torch.randn(3, 3, 32, 32)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, :12] = True  # 4 visible
    mask[1, ::2] = True  # 8 visible
    mask[2, [1, 5, 9]] = True  # 13 visible
    out = enc(x, mask)
    assert out.tokens.shape == (3, 2 + 1 + 13, 192)
    for b in range(3):
        # reference: only this sample's visible tokens, no padding, straight through the timm blocks
        tokens, _ = enc.embed(x[b : b + 1])
        keep = torch.cat([torch.arange(3), 3 + torch.nonzero(~mask[b]).squeeze(1)])
        ref = vit.norm(vit.blocks(tokens[:, keep]))
        n = int(out.valid[b].sum())
        torch.testing.assert_close(out.tokens[b, : 3 + n], ref[0], rtol=1e-4, atol=1e-5)
        assert torch.equal(out.patch_ids[b, :n], torch.nonzero(~mask[b]).squeeze(1))


def test_replace_mode_inserts_the_mask_token_before_positions():
    vit = _vit()
    enc = MaskedViT(vit, mask_token=True)
    x = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 7]] = True
    out = enc(x, mask, mode="replace")
    patches = vit.patch_embed(x).reshape(1, 16, -1)
    patches[0, [0, 7]] = enc.mask_token[0, 0]
    ref = vit.norm(vit.blocks(vit._pos_embed(patches.reshape(1, 4, 4, -1))))
    torch.testing.assert_close(out.tokens, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mask_token=True"):
        MaskedViT(vit)(x, mask, mode="replace")


def test_cls_and_patches_equals_the_full_forward_on_the_tokens_it_reads():
    """The pruned last block (MLP and norm only on the class token and the selected patches) is exact: outputs and
    gradients as the full forward's, with registers, with a mask token, and with drop-path under the same seed."""
    vit = _vit(reg_tokens=2, drop_path_rate=0.5).train()
    enc = MaskedViT(vit, mask_token=True).train()
    x = torch.randn(3, 3, 32, 32)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, [1, 2, 9]] = True
    mask[2, 15] = True  # sample 1: nothing selected but its class token
    for masked in (None, mask):
        torch.manual_seed(7)
        full = enc(x, masked, mode="replace") if masked is not None else enc(x)
        ref_cls, ref_patches = full.cls, full.patches[mask]
        (ref_cls.sum() + 2 * ref_patches.sum()).backward()
        ref_grad = vit.blocks[-1].mlp.fc1.weight.grad.clone()
        enc.zero_grad()
        torch.manual_seed(7)
        cls, patches = enc.cls_and_patches(x, mask, masked)
        (cls.sum() + 2 * patches.sum()).backward()
        torch.testing.assert_close(cls, ref_cls, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(patches, ref_patches, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vit.blocks[-1].mlp.fc1.weight.grad, ref_grad, rtol=1e-4, atol=1e-6)
        enc.zero_grad()
    cls_only, none = enc.eval().cls_and_patches(x)
    assert none is None
    torch.testing.assert_close(cls_only, enc(x).cls, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="patch grid"):
        enc.cls_and_patches(x, mask[:, :8])


def test_cls_and_patches_runs_other_last_blocks_whole():
    vit = _vit()
    enc = MaskedViT(vit)

    class Wrapped(torch.nn.Module):  # not timm's Block: no pruning, same result
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x, attn_mask=None):
            return self.block(x, attn_mask=attn_mask)

    vit.blocks[-1] = Wrapped(vit.blocks[-1])
    x = torch.randn(2, 3, 32, 32)
    sel = torch.zeros(2, 16, dtype=torch.bool)
    sel[1, 3] = True
    cls, patches = enc.cls_and_patches(x, sel)
    out = enc(x)
    torch.testing.assert_close(cls, out.cls)
    torch.testing.assert_close(patches, out.patches[sel])


def test_gradient_checkpointing_recomputes_blocks_and_keeps_gradients():
    grads = []
    for ckpt in (False, True):
        vit = _vit(grad_checkpointing=ckpt).train()
        calls = {"n": 0}
        mlp_forward = vit.blocks[0].mlp.forward

        def counted(x, _f=mlp_forward, _c=calls):
            _c["n"] += 1
            return _f(x)

        vit.blocks[0].mlp.forward = counted  # (module hooks do not fire on recomputation; a wrapped forward does)
        MaskedViT(vit)(torch.ones(2, 3, 32, 32)).tokens.sum().backward()
        grads.append((calls["n"], vit.blocks[0].attn.qkv.weight.grad.clone()))
    assert grads[0][0] == 1 and grads[1][0] == 2  # the checkpointed block ran again during backward
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_masks_random_block_and_ibot():
    torch.manual_seed(0)
    assert int(RandomPatchMask(8, 0.75)().sum()) == 48
    grouped = RandomPatchMask(8, 0.5, unit=2)().reshape(8, 8)
    assert torch.equal(grouped[::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1), grouped)
    block = BlockPatchMask(14, 0.4)
    counts = [int(block().sum()) for _ in range(20)]
    assert max(counts) <= round(196 * 0.4) and min(counts) >= 0.8 * round(196 * 0.4)
    ibot = IBOTMask(14, prob=0.5, ratio=(0.1, 0.5))
    sums = [int(ibot().sum()) for _ in range(200)]
    assert 0.35 < sum(s == 0 for s in sums) / 200 < 0.65
    assert max(sums) <= 0.5 * 196


def test_vit3d_with_mae_and_masking():
    torch.manual_seed(0)
    vit = vit3d_tiny(img_size=16, patch_size=8, in_chans=1, depth=2)
    x = torch.randn(2, 1, 16, 16, 24)  # any divisible size: positions are computed for the grid
    assert vit(x).shape == (2, 192)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :6] = True
    out = MaskedViT(vit)(x, mask)
    assert out.grid == (2, 2, 3) and out.tokens.shape == (2, 1 + 12, 192) and int(out.valid[0].sum()) == 6
    loss = MAE(vit, decoder_dim=64, decoder_heads=2)({"image": x})["loss"]
    loss.backward()
    assert torch.isfinite(loss) and vit.patch_embed.proj.weight.grad is not None


# ---------------------------------------------------------------- loading


def _export(tmp_path, in_chans=3, img_size=32):
    vit = _vit(in_chans=in_chans, img_size=img_size)
    pre = {"img_size": img_size, "in_chans": in_chans, "mean": [0.3] * in_chans, "std": [0.2] * in_chans}
    return vit, export_backbone(vit, tmp_path / "export", pre)


def test_load_from_export_and_run_folder(tmp_path):
    vit, folder = _export(tmp_path)
    for source in (folder, tmp_path):  # tmp_path plays the run folder (it has export/)
        model = load_backbone(source)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), vit.state_dict().values()))
        assert model.pretrained_cfg["mean"] == [0.3] * 3 and tuple(model.pretrained_cfg["input_size"]) == (3, 32, 32)


def test_load_checkpoint_file_with_prefixes(tmp_path):
    vit = _vit()
    nested = {"model": {f"encoder.vit.{k}": v for k, v in vit.state_dict().items()}, "step": 3}
    torch.save(nested, tmp_path / "ckpt.pt")
    save_file({f"module.{k}": v.contiguous() for k, v in vit.state_dict().items()}, tmp_path / "w.safetensors")
    for f in ("ckpt.pt", "w.safetensors"):
        model = load_backbone(tmp_path / f, arch="vit_tiny_patch16_224", img_size=32, depth=2, patch_size=8)
        torch.testing.assert_close(model.pos_embed, vit.pos_embed)
    with pytest.raises(ConfigError, match="arch="):
        load_backbone(tmp_path / "ckpt.pt")


def test_channel_adaptation_and_position_interpolation(tmp_path):
    vit, folder = _export(tmp_path)
    grey = load_backbone(folder, in_chans=1)
    w = vit.patch_embed.proj.weight
    torch.testing.assert_close(grey.patch_embed.proj.weight, w.mean(1, keepdim=True))
    assert grey.pretrained_cfg["input_size"][0] == 1 and len(grey.pretrained_cfg["mean"]) == 1
    ms = load_backbone(folder, in_chans=13)
    expected13 = torch.cat([w] * 5, dim=1)[:, :13] * 3 / 13  # repeat RGB filters cyclically, rescale by 3/13
    torch.testing.assert_close(ms.patch_embed.proj.weight, expected13)
    # with a multiple of 3 channels, an image with equal channels gives the RGB model's patch response
    six = load_backbone(folder, in_chans=6)
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(
        six.patch_embed(x.expand(1, 6, 32, 32)), vit.patch_embed(x.expand(1, 3, 32, 32)), rtol=1e-4, atol=1e-5
    )
    summed = adapt_channels(w, 1, mode="sum")
    torch.testing.assert_close(summed * 1.0, w.sum(1, keepdim=True))
    big = load_backbone(folder, img_size=64)
    assert big.pos_embed.shape == (1, 1 + 64, 192)
    expected = resample_abs_pos_embed(vit.pos_embed, new_size=(8, 8), old_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(big.pos_embed, expected)


def test_load_hf_hub_id_and_timm_name_from_local_cache(tmp_path, monkeypatch):
    """Hub layout built locally: HF cache folders + offline mode; no network is touched."""
    vit, folder = _export(tmp_path)
    cache = tmp_path / "hf"

    def publish(repo_id, files):
        base = cache / f"models--{repo_id.replace('/', '--')}"
        snap = base / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
        snap.mkdir(parents=True)
        for name, src in files.items():
            shutil.copy(src, snap / name)
        (base / "refs").mkdir()
        (base / "refs" / "main").write_text(snap.name)

    publish("lab/tiny-vit", {"config.json": folder / "config.json", "model.safetensors": folder / "model.safetensors"})
    # timm's own hub weights for a timm name live in the same cache under timm/<name>
    timm_cfg = json.loads((folder / "config.json").read_text())
    timm_cfg["architecture"] = "vit_tiny_patch16_224"
    (tmp_path / "timm_config.json").write_text(json.dumps(timm_cfg))
    publish(
        "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        {"config.json": tmp_path / "timm_config.json", "model.safetensors": folder / "model.safetensors"},
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    hub = load_backbone("hf-hub:lab/tiny-vit")
    torch.testing.assert_close(hub.pos_embed, vit.pos_embed)
    named = load_backbone("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", img_size=32)
    torch.testing.assert_close(named.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)


def test_load_dinov2_style_checkpoint(tmp_path):
    """Synthetic checkpoint in the facebookresearch/dinov2 layout (mask_token, layer scale, patch 14), as published
    DINOv2/UNI weights come; timm's converter maps it and the 518 px grid is resampled to 224 px."""
    torch.manual_seed(0)
    src = create_vit(img_size=518, patch_size=14, depth=2, init_values=1e-5, dynamic_img_size=False)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 192)
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    model = load_backbone(
        tmp_path / "dinov2_vits14_pretrain.pth",
        arch="vit_tiny_patch16_224",
        img_size=224,
        patch_size=14,
        depth=2,
        init_values=1e-5,
    )
    torch.testing.assert_close(model.blocks[1].ls1.gamma, src.blocks[1].ls1.gamma)
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 192)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 192)


def test_vit3d_export_round_trip_and_channel_adaptation(tmp_path):
    from domainfm.backbones.vit3d import create_vit3d

    torch.manual_seed(0)
    vit = create_vit3d("vit3d_tiny", img_size=16, patch_size=8, in_chans=1, depth=2)
    pre = {"img_size": 16, "in_chans": 1, "mean": [0.0], "std": [1.0], "spacing": [1.0, 1.0, 1.0]}
    folder = export_backbone(vit, tmp_path / "run" / "export", pre, tag="t")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "domainfm_vit3d" and config["pretrained_cfg"]["input_size"] == [1, 16, 16, 16]
    assert (
        config["domainfm"] == {"spacing": [1.0, 1.0, 1.0]}
        and "16 x 16 x 16 voxels" in (folder / "README.md").read_text()
    )
    x = torch.randn(2, 1, 16, 16, 24)
    for source in (folder, tmp_path / "run"):  # an export folder or the run folder holding it
        loaded = load_backbone(source).eval()
        assert torch.allclose(loaded(x), vit.eval()(x), atol=1e-6)
    assert loaded.pretrained_cfg["domainfm"] == {"spacing": [1.0, 1.0, 1.0]} and loaded.domainfm_weights == str(source)
    # 1 -> 2 channels: filters repeated and halved, so a volume given twice has the source's response
    two = create_vit3d("vit3d_tiny", in_chans=2, weights=str(folder))
    assert two.pretrained_cfg["input_size"] == (2, 16, 16, 16) and two.pretrained_cfg["mean"] == [0.0, 0.0]
    assert torch.allclose(two.eval()(x.repeat(1, 2, 1, 1, 1)), vit(x), atol=1e-5)
    block_outs = vit.forward_intermediates(x, [0, 1])[1]
    assert [tuple(b.shape) for b in block_outs] == [(2, 192, 2, 2, 3)] * 2
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("blocks.1.")}
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"do not fit domainfm_vit3d: \d+ missing \(e.g. \['blocks.1"):
        load_backbone(folder)

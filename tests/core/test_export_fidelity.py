"""Exports load exactly right everywhere: timm's own preprocessing of an export is domainfm's, re-exports load in
timm, loaded weights carry no foreign provenance, weights that do not fit are errors, DINOv2 chunked checkpoints
load, and a model card sits next to the weights."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.backbones.vit import create_vit
from domainfm.data.images import read_image
from domainfm.engine.export import export_backbone
from domainfm.errors import ConfigError
from domainfm.evaluation.features import Preprocess
from PIL import Image

PRE = {"in_chans": 3, "img_size": 64, "mean": [0.5, 0.6, 0.4], "std": [0.25, 0.2, 0.3], "mpp": 0.5}


def _vit(**kw):
    torch.manual_seed(0)
    return create_vit("vit_tiny_patch16_224", img_size=64, patch_size=16, depth=2, **kw)


def test_timms_transform_on_the_export_is_domainfms_view(tmp_path, kather_tiles):
    """What TRIDENT and every timm user do (resolve_data_config + create_transform on the export) gives the
    tensors domainfm's evaluation gives, on a real 150 px Kather tile: PIL's and torch's antialiased bilinear
    resize agree to under 1/255 of a pixel; timm's inherited defaults (bicubic, crop_pct 0.9) moved features."""
    out = export_backbone(_vit(), tmp_path / "export", PRE)
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["crop_mode"]) == ("bilinear", 1.0, "center")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    ours = load_backbone(out).eval()
    view = Preprocess.of(ours).view()
    tiles = sorted(p for p in kather_tiles.rglob("*.tif"))[:4]
    for path in tiles:
        x_ours = view(read_image(path, 3))
        x_timm = transform(Image.open(path).convert("RGB"))
        assert x_ours.shape == x_timm.shape == (3, 64, 64)
        pixel_error = ((x_ours - x_timm).abs() * torch.tensor(PRE["std"])[:, None, None]).max()
        assert pixel_error < 1 / 255, path.name
        with torch.no_grad():
            cos = torch.cosine_similarity(ours(x_ours[None]), model(x_timm[None])).item()
        assert cos > 0.99999


def test_a_reexport_of_loaded_weights_loads_in_timm_without_their_provenance(tmp_path):
    """finetune re-exports a loaded model: its pretrained_cfg (with domainfm keys and the architecture's ImageNet
    hub id, url and licence) must not reach the new config.json, whose domain keys stay top level."""
    first = export_backbone(_vit(), tmp_path / "a", PRE, tag="domainfm-a")
    loaded = load_backbone(first)
    for key in ("hf_hub_id", "url", "license"):
        assert key not in loaded.pretrained_cfg, key
    assert loaded.pretrained_cfg["domainfm"] == {"mpp": 0.5} and loaded.pretrained_cfg["tag"] == "domainfm-a"
    second = export_backbone(loaded, tmp_path / "b", {**PRE, "in_chans": 3}, tag="domainfm-b")
    config = json.loads((second / "config.json").read_text())
    assert "domainfm" not in config["pretrained_cfg"] and config["domainfm"] == {"mpp": 0.5}
    assert not {"hf_hub_id", "url", "license"} & set(config["pretrained_cfg"])
    again = timm.create_model(f"local-dir:{second}", pretrained=True)
    assert again.pretrained_cfg["tag"] == "domainfm-b"
    for a, b in zip(again.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.pretrained_cfg["domainfm"] == {"mpp": 0.5}  # the exported model itself is left as it was


def test_a_model_card_lies_next_to_the_weights(tmp_path):
    card = {"recipe": "uni_tiny", "method": "DINOv2", "steps": 60, "data": "40 samples (SlideTileDataset)"}
    out = export_backbone(_vit(), tmp_path / "export", {**PRE, "license": "cc-by-nc-4.0"}, card=card)
    text = (out / "README.md").read_text()
    assert text.startswith("---\nlibrary_name: timm\nlicense: cc-by-nc-4.0\n")
    for piece in ("# uni_tiny", "- method: DINOv2", "- optimizer steps: 60", "3 channel(s), 64 x 64 px", "- mpp: 0.5"):
        assert piece in text, piece
    assert "license: other" in (export_backbone(_vit(), tmp_path / "plain", PRE) / "README.md").read_text()


def test_layerscale_weights_without_init_values_are_an_error(tmp_path):
    """A UNI-layout checkpoint (LayerScale) loaded into a ViT without init_values dropped 2 x depth tensors with a
    warning and gave other outputs; now it is one error naming the keys and the fix."""
    torch.save(_vit(init_values=1e-5).state_dict(), tmp_path / "uni_like.pth")
    with pytest.raises(ConfigError) as err:
        load_backbone(tmp_path / "uni_like.pth", arch="vit_tiny_patch16_224", img_size=64, depth=2)
    message = str(err.value)
    assert "4 unexpected (e.g. ['blocks.0.ls1.gamma'" in message and "set backbone.init_values" in message
    ok = load_backbone(tmp_path / "uni_like.pth", arch="vit_tiny_patch16_224", img_size=64, depth=2, init_values=1e-5)
    assert ok.blocks[1].ls2.gamma.shape == (192,)
    state = _vit().state_dict()
    state["blocks.0.attn.extra"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"1 unexpected \(e.g. \['blocks.0.attn.extra'\]\)"):
        load_backbone(tmp_path / "extra.pth", arch="vit_tiny_patch16_224", img_size=64, depth=2)


def test_dinov2_block_chunked_checkpoints_load(tmp_path):
    """DINOv2 with block_chunks=2 saves blocks as blocks.<chunk>.<global index>. (chunks padded by Identity)."""
    vit = _vit(init_values=1e-5)
    chunked = {}
    for key, value in vit.state_dict().items():
        if key.startswith("blocks."):
            i = int(key.split(".")[1])
            key = f"blocks.{i}.{i}." + key.split(".", 2)[2]  # depth 2 in 2 chunks: block i is chunk i
        chunked[key] = value
    assert "blocks.1.1.attn.qkv.weight" in chunked
    torch.save({"teacher": {f"backbone.{k}": v for k, v in chunked.items()}}, tmp_path / "teacher_checkpoint.pth")
    model = load_backbone(
        tmp_path / "teacher_checkpoint.pth", arch="vit_tiny_patch16_224", img_size=64, depth=2, init_values=1e-5
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit.eval()(x))

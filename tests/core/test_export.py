"""The exported backbone loads in timm with its weights and the preprocessing it expects."""

import json

import timm
import torch
from safetensors.torch import load_file

from tests.conftest import TINY, run_cli


def test_pretrain_export_loads_in_timm(tmp_path):
    run = tmp_path / "run"
    out = run_cli(
        [
            "pretrain",
            f"run_dir={run}",
            "trainer.max_steps=3",
            "preprocess.in_chans=1",
            "preprocess.mean=[0.4]",
            "preprocess.std=[0.2]",
            *TINY,
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert f"export         {run / 'export'}" in out.stdout
    model = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True)
    cfg = model.pretrained_cfg
    assert tuple(cfg["input_size"]) == (1, 32, 32)
    assert list(cfg["mean"]) == [0.4] and list(cfg["std"]) == [0.2]
    assert model.patch_embed.proj.in_channels == 1 and len(model.blocks) == 2

    ckpt = torch.load(sorted((run / "checkpoints").iterdir())[-1], weights_only=True)
    prefix = "encoder.vit."  # MAE's encoder wraps the exported ViT
    trained = {k[len(prefix) :]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    loaded = model.state_dict()
    assert trained.keys() == loaded.keys()
    for k, v in trained.items():
        assert torch.equal(v, loaded[k]), k
    assert load_file(run / "export" / "model.safetensors").keys() == loaded.keys()
    # grey images of the trained size run through the loaded model
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 192)
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["pretrained_cfg"]["tag"] == "domainfm-mae_vit_tiny"


def test_export_command_rewrites_from_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert (
        run_cli(
            ["pretrain", f"run_dir={run}", "trainer.max_steps=2", "trainer.checkpoint_every=1", *TINY], tmp_path
        ).returncode
        == 0
    )
    first = sorted((run / "checkpoints").iterdir())[0]
    out = run_cli(["export", f"run_dir={run}", f"checkpoint={first}", f"out={tmp_path / 'step1'}"], tmp_path)
    assert out.returncode == 0, out.stderr
    model = timm.create_model(f"local-dir:{tmp_path / 'step1'}", pretrained=True)
    ckpt = torch.load(first, weights_only=True)
    weight = model.patch_embed.proj.weight
    assert torch.equal(weight, ckpt["model"]["encoder.vit.patch_embed.proj.weight"])
    assert not torch.equal(weight, load_file(run / "export" / "model.safetensors")["patch_embed.proj.weight"])

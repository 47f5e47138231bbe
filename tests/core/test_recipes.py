"""Every core recipe trains for a few steps on real images and exports a backbone that timm loads."""

import timm
import torch

from tests.conftest import TINY, pretrain_in_process

RECIPES = ["mae", "simmim", "dinov2", "simclr", "mocov3", "clip"]


def test_every_core_recipe_trains_and_exports(tmp_path):
    for name in RECIPES:
        run = tmp_path / name
        overrides = [f"recipe=core/{name}_vit_tiny", f"run_dir={run}", "trainer.max_steps=2", *TINY]
        if name == "dinov2":  # 32 px globals with 16 px locals on an 8 px patch grid
            overrides += ["data.transform.local_size=16", "method.out_dim=256", "method.hidden_dim=128"]
        summary = pretrain_in_process(overrides)
        assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["final_loss"])), name
        model = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 192), name
        assert model.pretrained_cfg["tag"] == f"domainfm-{name}_vit_tiny"


def test_continue_pretraining_from_weights(tmp_path):
    """Start a run from an earlier export (the same path serves published weights: hf-hub ids, timm names)."""
    first = tmp_path / "first"
    pretrain_in_process([f"run_dir={first}", "trainer.max_steps=1", *TINY])
    start = timm.create_model(f"local-dir:{first / 'export'}", pretrained=True)
    second = tmp_path / "second"
    pretrain_in_process(
        [
            f"run_dir={second}",
            "trainer.max_steps=1",
            "trainer.lr=0",
            "trainer.min_lr=0",
            f"+backbone.weights={first / 'export'}",
            "preprocess.in_chans=1",
            "preprocess.mean=[0.5]",
            "preprocess.std=[0.25]",
            "data.dataset.in_chans=1",
            *TINY,
        ]
    )
    cont = timm.create_model(f"local-dir:{second / 'export'}", pretrained=True)
    # lr 0: the exported weights are the loaded ones, with RGB filters averaged for the grey input
    torch.testing.assert_close(cont.patch_embed.proj.weight, start.patch_embed.proj.weight.mean(1, keepdim=True))
    torch.testing.assert_close(cont.blocks[1].mlp.fc1.weight, start.blocks[1].mlp.fc1.weight)

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

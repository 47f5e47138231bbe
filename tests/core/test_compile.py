"""trainer.compile=true: the compiled method trains and gives the eager run's weights (slow: compiles on CPU; runs
under `make bench`)."""

import pytest
import torch
from domainfm.backbones.vit import create_vit
from domainfm.engine.trainer import Trainer, TrainerConfig
from domainfm.methods.mae import MAE


class Synthetic(torch.utils.data.Dataset):
    """Synthetic: 16 fixed random images with fixed masks."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 3, 32, 32, generator=g)
        self.m = torch.rand(16, 16, generator=g).argsort(1) < 12

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"image": self.x[i], "mask": self.m[i]}


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    weights = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        method = MAE(create_vit(img_size=32, patch_size=8, depth=2), decoder_dim=64, decoder_heads=2)
        cfg = TrainerConfig(
            max_steps=3,
            batch_size=8,
            num_workers=0,
            progress=False,
            tensorboard=False,
            compile=compile_,
            checkpoint_every=100,
            lr=1e-3,
            warmup_steps=0,
        )
        Trainer(method, Synthetic(), tmp_path / str(compile_), cfg).fit()
        weights.append(method.backbone.blocks[0].attn.qkv.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-3, atol=1e-4)

"""Fixtures for the evaluation tests: a small locally built backbone export and real image features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def make_export(folder, seed: int = 0, in_chans: int = 3, depth: int = 2):
    """A randomly initialised ViT (32 px, patch 8) exported like ``domainfm pretrain`` does."""
    from domainfm.backbones.vit import create_vit
    from domainfm.engine.export import export_backbone

    torch.manual_seed(seed)
    model = create_vit(img_size=32, patch_size=8, depth=depth, in_chans=in_chans)
    mean, std = MEAN[:in_chans], STD[:in_chans]
    return export_backbone(model, folder, {"img_size": 32, "in_chans": in_chans, "mean": mean, "std": std})


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("backbone") / "run" / "export")


@pytest.fixture(scope="session")
def eurosat(shared_data):
    return shared_data / "remote_sensing" / "eurosat_rgb_small"


@pytest.fixture(scope="session")
def eurosat_pixels(eurosat):
    """Real features: EuroSAT images (10 classes x 10) downsampled to 8 x 8 RGB, as 192-d vectors."""
    xs, ys = [], []
    for label, folder in enumerate(sorted(p for p in eurosat.iterdir() if p.is_dir())):
        for path in sorted(folder.glob("*.jpg")):
            with Image.open(path) as im:
                xs.append(np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float64).ravel() / 255)
            ys.append(label)
    return np.stack(xs), np.array(ys)

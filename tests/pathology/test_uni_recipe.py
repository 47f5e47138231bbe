"""UNI recipes: tile the real sample slide, pretrain `pathology/uni_tiny` with slide-balanced sampling, export."""

import json

import timm
import torch
from domainfm.pathology.tiling import tile_slides

from tests.conftest import pretrain_in_process


def test_uni_tiny_pretrains_on_tiles_of_the_real_slide(tmp_path, shared_data):
    slide = shared_data / "pathology" / "CMU-1-Small-Region.svs"
    summary = tile_slides(slide, tmp_path / "tiles", progress=False)
    assert summary.to_dict()["tiles"] > 20
    run = tmp_path / "run"
    out = pretrain_in_process(
        [
            "recipe=pathology/uni_tiny",
            f"data.root={slide}",
            f"data.coords={tmp_path / 'tiles' / 'patches'}",
            f"run_dir={run}",
            "trainer.max_steps=2",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.progress=false",
            "trainer.tensorboard=false",
            "+backbone.depth=2",
            "method.out_dim=256",
            "method.hidden_dim=64",
        ]
    )
    assert out["steps"] == 2 and out["skipped_files"] == []
    model = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True)
    cfg = model.pretrained_cfg
    assert tuple(cfg["input_size"]) == (3, 64, 64)
    assert json.loads((run / "export" / "config.json").read_text())["domainfm"] == {"mpp": 0.5}
    from domainfm.backbones.loading import load_backbone

    assert load_backbone(run).pretrained_cfg["domainfm"] == {"mpp": 0.5}
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 192)
    resolved = (run / "config.yaml").read_text()
    assert "HEDJitter" in resolved and "balanced: true" in resolved
    assert json.loads((run / "summary.json").read_text())["final_loss"] > 0

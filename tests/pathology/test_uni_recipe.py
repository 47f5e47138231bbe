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
    # the tiles' MPP and side from the coordinate files, and the scale the 64 px model input sees: 256 px at 0.5
    # um/px resized to 64 px is 2 um/px
    scale = {"mpp": 0.5, "tile_px": 256, "input_mpp": 2.0}
    assert json.loads((run / "export" / "config.json").read_text())["domainfm"] == scale
    from domainfm.backbones.loading import load_backbone

    assert load_backbone(run).pretrained_cfg["domainfm"] == scale
    card = (run / "export" / "README.md").read_text()
    assert "# uni_tiny" in card and "- method: DINOv2" in card and "- input_mpp: 2.0" in card
    assert str(slide) not in card and "CMU-1" not in card  # counts, never the archive's file names
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 192)
    resolved = (run / "config.yaml").read_text()
    assert "HEDJitter" in resolved and "balanced: true" in resolved
    assert json.loads((run / "summary.json").read_text())["final_loss"] > 0

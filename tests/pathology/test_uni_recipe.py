"""UNI recipes: tile the real sample slide, pretrain `pathology/uni_tiny` with slide-balanced sampling, export; what
`pathology/uni` takes from the UNI paper and DINOv2, and the stain opt-in `pathology/uni_hed`."""

import json

import timm
import torch
from domainfm.data.sampling import SeededDataset
from domainfm.data.transforms import RGBPhotometric
from domainfm.pathology.stain import HEDJitter
from domainfm.pathology.tiling import tile_slides
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import compose, pretrain_in_process

# UNI paper (Chen et al. 2024; model card): Mass-100K images at 20x
N_256, N_512 = 75_832_905, 24_297_995
DINOV2_COLOUR = dict(jitter=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale=0.2)


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
    resolved = OmegaConf.load(run / "config.yaml")
    assert "HEDJitter" not in (run / "config.yaml").read_text() and resolved.data.balanced is True
    assert list(resolved.data.dataset.region_px) == [256, 512] and resolved.data.transform.vflip == 0.0
    assert json.loads((run / "summary.json").read_text())["final_loss"] > 0


def _recipe(name: str):
    return compose("pretrain", [f"recipe=pathology/{name}", "data.root=/slides", "data.coords=/tiles"])


def test_uni_takes_dinov2_and_the_paper_values():
    """pathology/uni: the DINOv2 ViT-L/16 defaults, the paper's 256/512 px mix at 0.5 um/px, DINOv2's colour
    augmentation, no stain augmentation and no vertical flips; uni_tiny keeps all of that at CPU size."""
    cfg = _recipe("uni")
    assert cfg.backbone.name == "vit_large_patch16_224" and cfg.backbone.drop_path_rate == 0.3
    assert cfg.backbone.init_values == 1e-5 and cfg.method.out_dim == 65536 and list(cfg.method.momentum) == [0.992, 1]
    assert cfg.trainer.max_steps == 125_000 and cfg.trainer.lr == 4e-3 and cfg.data.mpp == 0.5
    t = cfg.data.transform
    assert (t.global_size, t.local_size, t.n_global, t.n_local) == (224, 96, 2, 8) and t.vflip == 0.0
    assert list(t.global_scale) == [0.32, 1.0] and list(t.local_scale) == [0.05, 0.32]
    ds = cfg.data.dataset
    assert list(ds.region_px) == [256, 512] and abs(ds.region_p[1] - N_512 / (N_256 + N_512)) < 1e-3
    assert sum(ds.region_p) == 1.0
    photometric = instantiate(t.photometric)
    (colour,) = photometric.transforms  # one step: no HED jitter
    assert isinstance(colour, RGBPhotometric)
    jitter = colour.ops.transforms[0]  # RandomApply([ColorJitter], p)
    assert jitter.p == 0.8 and colour.ops.transforms[1].p == 0.2
    cj = jitter.transforms[0]
    assert (cj.brightness, cj.contrast, cj.saturation, cj.hue) == ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
    tiny = _recipe("uni_tiny")
    assert tiny.data.dataset == cfg.data.dataset and tiny.data.transform.photometric == t.photometric
    assert tiny.data.transform.vflip == 0.0 and tiny.backbone.name == "vit_tiny_patch16_224"


def test_uni_hed_adds_stain_jitter_and_vertical_flips(tmp_path, shared_data):
    """pathology/uni_hed = pathology/uni + HED jitter (after the same colour step) + vertical flips, nothing else;
    its transform runs on samples of the real slide (tiles and 512 px regions)."""
    uni, hed = _recipe("uni"), _recipe("uni_hed")
    assert hed.data.transform.vflip == 0.5
    steps = hed.data.transform.photometric.transforms
    assert len(steps) == 2 and steps[0] == uni.data.transform.photometric.transforms[0]
    assert steps[1]._target_ == "domainfm.pathology.stain.HEDJitter" and (steps[1].alpha, steps[1].beta) == (0.05, 0.05)
    rest = [OmegaConf.to_container(c, resolve=False) for c in (uni, hed)]
    for c in rest:
        for key in ("name", "description"):
            del c[key]
        for key in ("vflip", "photometric"):
            del c["data"]["transform"][key]
    assert rest[0] == rest[1]

    slide = shared_data / "pathology" / "CMU-1-Small-Region.svs"
    tile_slides(slide, tmp_path / "tiles", progress=False)
    cfg = compose(
        "pretrain",
        ["recipe=pathology/uni_hed", f"data.root={slide}", f"data.coords={tmp_path / 'tiles' / 'patches'}"],
    )
    dataset, transform = instantiate(cfg.data.dataset), instantiate(cfg.data.transform)
    assert isinstance(transform.photometric.transforms[1], HEDJitter) and transform.vflip == 0.5
    samples = SeededDataset(dataset, transform)
    sides = set()
    for seed in range(8):
        torch.manual_seed(seed)
        sides.add(dataset.region_side(seed % len(dataset)))
        out = samples[(seed % len(dataset), seed)]
        assert [v.shape for v in out["global_crops"]] == [(3, 224, 224)] * 2
        assert [v.shape for v in out["local_crops"]] == [(3, 96, 96)] * 8
        assert all(torch.isfinite(v).all() for v in out["global_crops"] + out["local_crops"])
    assert sides == {256, 512}

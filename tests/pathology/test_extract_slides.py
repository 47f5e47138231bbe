"""`domainfm extract` on slides: one TRIDENT-layout .h5 per slide, features equal to the backbone on each tile."""

import h5py
import numpy as np
import pytest
import torch
from domainfm.backbones.vit import create_vit
from domainfm.cli import compose_config
from domainfm.commands import extract
from domainfm.data.transforms import ResizeView
from domainfm.engine.export import export_backbone
from domainfm.errors import DataError
from domainfm.pathology.slide import open_slide
from domainfm.pathology.tiling import tile_slides

MEAN, STD = [0.6, 0.5, 0.7], [0.2, 0.2, 0.2]


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("slides")
    slide = shared_data / "pathology" / "CMU-1-Small-Region.svs"
    tile_slides(slide, tmp / "tiles", progress=False)
    return slide, tmp / "tiles" / "patches"


def _export(tmp_path, mpp):
    torch.manual_seed(0)
    vit = create_vit(img_size=64, patch_size=16, depth=2).eval()
    export_backbone(vit, tmp_path / "export", {"img_size": 64, "in_chans": 3, "mean": MEAN, "std": STD, "mpp": mpp})
    return vit


def test_extract_writes_features_of_every_tile(tmp_path, tiled, monkeypatch):
    import domainfm.pathology.features as features_module
    from domainfm.pathology.datasets import SlideTileDataset

    threads = []

    class Spy(SlideTileDataset):
        def __init__(self, *args, **kwargs):
            threads.append(kwargs.get("threads"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(features_module, "SlideTileDataset", Spy)
    slide, coords = tiled
    vit = _export(tmp_path, mpp=0.5)
    out = tmp_path / "features"
    cfg = compose_config(
        "extract",
        [
            f"backbone={tmp_path / 'export'}",
            f"data.root={slide}",
            f"data.coords={coords}",
            f"out={out}",
            "progress=false",
            "data.num_workers=0",
            "data.threads=3",  # the tiles of each batch read by 3 threads
        ],
    )
    extract.run(cfg)
    assert threads == [3]
    with h5py.File(out / "CMU-1-Small-Region.h5") as f:
        feats, xy = f["features"][:], f["coords"][:]
        assert f["coords"].attrs["patch_size"] == 256 and f["coords"].attrs["target_mpp"] == 0.5
    with h5py.File(coords / "CMU-1-Small-Region.h5") as f:
        assert np.array_equal(xy, f["coords"][:])
    # tile 3 by hand: read at 0.5 um/px, resize to 64 px, normalise, cls token
    tile = open_slide(slide).read_tile(int(xy[3, 0]), int(xy[3, 1]), 256, 256)
    x = ResizeView(64, MEAN, STD)(torch.from_numpy(tile.transpose(2, 0, 1).copy()).float() / 255.0)
    with torch.no_grad():
        expected = vit.forward_features(x[None])[0, 0].numpy()
    np.testing.assert_allclose(feats[3], expected, rtol=1e-3, atol=1e-4)
    # rerun: nothing to do
    extract.run(cfg)


def test_weights_of_another_resolution_are_refused(tmp_path, tiled):
    slide, coords = tiled
    _export(tmp_path, mpp=0.25)
    cfg = compose_config(
        "extract",
        [
            f"backbone={tmp_path / 'export'}",
            f"data.root={slide}",
            f"data.coords={coords}",
            f"out={tmp_path / 'f'}",
            "progress=false",
        ],
    )
    with pytest.raises(DataError, match=r"trained on tiles at 0.25 um/px but .* tiles at 0.5 um/px"):
        extract.run(cfg)

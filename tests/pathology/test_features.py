"""extract_slide_features with a tiny randomly initialised timm ViT: layout, values, resume, other weights, ranks."""

import h5py
import numpy as np
import pytest
import torch
from domainfm.backbones.vit import create_vit
from domainfm.data.transforms import Normalize
from domainfm.errors import DataError
from domainfm.pathology.datasets import SlideTileDataset
from domainfm.pathology.features import IMAGENET_MEAN, IMAGENET_STD, extract_slide_features
from domainfm.pathology.h5io import read_coords
from domainfm.pathology.tiling import TilingParams, tile_slides


def read_features(path) -> np.ndarray:
    with h5py.File(path) as f:
        return f["features"][:]


def tiny_vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_vit(img_size=64, patch_size=16, depth=2).eval()


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, cmu_slide, pyramid):
    out = tmp_path_factory.mktemp("coords")
    # 64 px tiles at 1 um/px on the real slide; at 2 um/px (level 1 as stored) on the synthetic pyramid
    tile_slides([cmu_slide], out, TilingParams(target_mpp=1.0, tile_px=64), progress=False)
    tile_slides([pyramid], out, TilingParams(target_mpp=2.0, tile_px=64), progress=False)
    return out, {"CMU-1-Small-Region": cmu_slide, "pyramid": pyramid}


def test_features_layout_and_values(tiled, tmp_path):
    coords_dir, slides = tiled
    backbone = tiny_vit(0)
    summary = extract_slide_features(
        backbone, slides, coords_dir, tmp_path, batch_size=32, num_workers=2, threads=2, progress=False
    )
    assert sorted(summary.extracted) == ["CMU-1-Small-Region", "pyramid"] and summary.done == []
    for name in slides:
        coords, attrs = read_coords(coords_dir / "patches" / f"{name}.h5")
        with h5py.File(tmp_path / f"{name}.h5") as f:
            features = f["features"][:]
            assert features.dtype == np.float32 and features.shape == (len(coords), 192)
            np.testing.assert_array_equal(f["coords"][:], coords)
            for key in ("patch_size", "patch_size_level0", "target_mpp", "level0_width", "level0_magnification"):
                assert f["coords"].attrs[key] == attrs[key] and f.attrs[key] == attrs[key]
            assert f.attrs["feature_dim"] == 192
    assert summary.tiles == sum(len(read_coords(coords_dir / "patches" / f"{n}.h5")[0]) for n in slides)
    # the stored rows are the backbone applied to the normalised tiles, in coordinate order
    ds = SlideTileDataset(coords_dir, slides, transform=Normalize(IMAGENET_MEAN, IMAGENET_STD), names=["pyramid"])
    with torch.no_grad():
        expected = backbone(torch.stack([ds[i]["image"] for i in (0, 17, 35)])).numpy()
    with h5py.File(tmp_path / "pyramid.h5") as f:
        np.testing.assert_allclose(f["features"][[0, 17, 35]], expected, atol=1e-5, rtol=1e-5)


def test_resume_other_weights_and_ranks(tiled, tmp_path):
    coords_dir, slides = tiled
    extract_slide_features(tiny_vit(0), slides, coords_dir, tmp_path, progress=False)
    mtime = (tmp_path / "pyramid.h5").stat().st_mtime_ns
    again = extract_slide_features(tiny_vit(0), slides, coords_dir, tmp_path, progress=False)
    assert again.extracted == [] and sorted(again.done) == ["CMU-1-Small-Region", "pyramid"]
    assert (tmp_path / "pyramid.h5").stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="model_sha1") as err:
        extract_slide_features(tiny_vit(1), slides, coords_dir, tmp_path, progress=False)
    assert "overwrite=true" in str(err.value)
    old = read_features(tmp_path / "pyramid.h5")
    redone = extract_slide_features(tiny_vit(1), slides, coords_dir, tmp_path, overwrite=True, progress=False)
    assert len(redone.extracted) == 2
    assert not np.allclose(read_features(tmp_path / "pyramid.h5"), old)
    # two ranks split the slides: rank 1 of 2 takes the second coordinate file only
    part = extract_slide_features(
        tiny_vit(0), slides, coords_dir, tmp_path / "r1", rank=1, world_size=2, progress=False
    )
    assert part.extracted == ["pyramid"] and [p.name for p in (tmp_path / "r1").iterdir()] == ["pyramid.h5"]


def test_backbone_must_return_pooled_features(tiled, tmp_path):
    coords_dir, slides = tiled
    tokens = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 16, 16), torch.nn.Flatten(2))  # (B, 8, 16): not (B, D)
    with pytest.raises(DataError, match=r"\(B, D\) features; it returned \(\d+, 8, 16\)"):
        extract_slide_features(tokens, slides, coords_dir, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_custom_preprocess_runs_per_image(tiled, tmp_path):
    coords_dir, slides = tiled
    backbone = tiny_vit(0)
    # every tile blanked by the preprocess: every row is the backbone's output for a blank tile
    extract_slide_features(
        backbone,
        {"pyramid": slides["pyramid"]},
        coords_dir / "patches" / "pyramid.h5",
        tmp_path,
        preprocess=lambda x: torch.zeros_like(x[:, :32, :32]),
        progress=False,
    )
    with torch.no_grad():
        blank = backbone(torch.zeros(1, 3, 32, 32)).numpy()
    np.testing.assert_allclose(read_features(tmp_path / "pyramid.h5"), np.repeat(blank, 36, axis=0), atol=1e-5)

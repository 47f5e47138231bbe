"""TRIDENT and CLAM read our tiles and features: faithful copies of the lines of their readers (TRIDENT a91fa849
``IO.read_coords`` / ``WSI.extract_patch_features`` / slide-encoder input; CLAM 53e2409d ``Whole_Slide_Bag_FP`` and
its training datasets), run on the synthetic pyramid (3 levels: downsamples 1, 4, 16)."""

from __future__ import annotations

import h5py
import numpy as np
import openslide
import pytest
import torch
from domainfm.backbones.vit import create_vit
from domainfm.cli import compose_config
from domainfm.commands import extract
from domainfm.engine.export import export_backbone
from domainfm.pathology.commands import layout
from domainfm.pathology.datasets import SlideTileDataset
from domainfm.pathology.tiling import TilingParams, tile_slides


def trident_coords(job, coords_dir, name):
    """TRIDENT: where it looks, and what its feature step reads (KeyError when an attribute is missing)."""
    path = job / coords_dir / "patches" / f"{name}_patches.h5"
    if not path.exists():
        return None  # "coords_not_found": the slide is skipped
    with h5py.File(path, "r") as f:
        attrs, coords = dict(f["coords"].attrs), f["coords"][:]
    ps, mag0, mag = attrs.get("patch_size"), attrs.get("level0_magnification"), attrs.get("target_magnification")
    if None in (ps, mag0, mag):
        raise KeyError("patch_level")  # its legacy fallback needs CLAM's attributes
    assert coords.ndim == 2 and coords.shape[1] == 2 and np.issubdtype(coords.dtype, np.integer)
    return int(ps), int(mag0), float(mag), coords


def trident_slide_encoder_input(job, coords_dir, encoder, name):
    with h5py.File(job / coords_dir / f"features_{encoder}" / f"{name}.h5", "r") as f:
        coords, feats, attrs = f["coords"][:], f["features"][:], dict(f["coords"].attrs)
    assert feats.shape[0] == coords.shape[0]
    return feats, coords, int(attrs["patch_size_level0"])


def clam_bag(h5dir, slide_path, slide_id):
    """CLAM's Whole_Slide_Bag_FP: coords, patch_level and patch_size (hard index), tiles by read_region."""
    with h5py.File(h5dir / "patches" / f"{slide_id}.h5", "r") as f:
        dset = f["coords"]
        level, size, n = dset.attrs["patch_level"], dset.attrs["patch_size"], len(dset)
        coords = dset[:]
    wsi = openslide.OpenSlide(str(slide_path))
    tiles = [np.asarray(wsi.read_region(tuple(int(v) for v in xy), int(level), (int(size), int(size))).convert("RGB"))
             for xy in coords[:4]]  # fmt: skip
    return n, int(level), int(size), tiles


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, pyramid):
    tmp = tmp_path_factory.mktemp("interop")
    tile_slides(pyramid, tmp / "tiles", TilingParams(target_mpp=2.0, tile_px=64), workers=1, progress=False)
    torch.manual_seed(0)
    vit = create_vit(img_size=64, patch_size=16, depth=1, embed_dim=24, num_heads=2).eval()
    export_backbone(vit, tmp / "enc", {"img_size": 64, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "mpp": 2.0})
    extract.run(
        compose_config(
            "extract",
            [
                f"backbone={tmp / 'enc'}",
                f"data.root={pyramid}",
                f"data.coords={tmp / 'tiles'}",
                f"out={tmp / 'features'}",
                "progress=false",
                "data.num_workers=0",
            ],
        )  # fmt: skip
    )
    return tmp


def test_trident_reads_our_tiles_and_features(tiled, pyramid):
    ours = tiled / "tiles" / "patches" / "pyramid.h5"
    # our own file already has every attribute TRIDENT's feature step reads; only the name differs
    assert trident_coords(tiled, "tiles", "pyramid") is None
    with h5py.File(ours) as f:
        assert {"patch_size", "level0_magnification", "target_magnification", "name", "savetodir"} <= set(
            f["coords"].attrs
        )
        xy = f["coords"][:]
    job = tiled / "trident"
    layout.run(compose_config("layout", ["format=trident", f"data.coords={tiled / 'tiles'}", f"out={job}",
                                          f"data.features={tiled / 'features'}", "encoder=vit_t"]))  # fmt: skip
    folder = "5x_64px_0px_overlap"  # 2 um/px = 5x
    ps, mag0, mag, coords = trident_coords(job, folder, "pyramid")
    assert (ps, mag0, mag) == (64, 20, 5.0) and np.array_equal(coords, xy)
    feats, fcoords, size0 = trident_slide_encoder_input(job, folder, "vit_t", "pyramid")
    assert size0 == 256 and np.array_equal(fcoords, xy)
    with h5py.File(tiled / "features" / "pyramid.h5") as f:
        np.testing.assert_array_equal(feats, f["features"][:])
    with h5py.File(job / folder / "features_vit_t" / "pyramid.h5") as f:
        assert dict(f["features"].attrs) == {"name": "pyramid", "savetodir": str(job / folder), "encoder": "vit_t"}
        assert len(f.attrs) == 0  # TRIDENT puts nothing on the file


def test_clam_reads_our_tiles_at_their_pyramid_level(tiled, pyramid):
    out = tiled / "clam"
    layout.run(compose_config("layout", ["format=clam", f"data.coords={tiled / 'tiles'}", f"data.root={pyramid}",
                                          f"out={out}", f"data.features={tiled / 'features'}"]))  # fmt: skip
    n, level, size, tiles = clam_bag(out, pyramid, "pyramid")
    assert (level, size) == (1, 64)  # 256 level-0 px = 64 px of the 4x level
    ours = SlideTileDataset(tiled / "tiles", pyramid)
    assert n == len(ours)
    for i, tile in enumerate(tiles):  # the same pixels as domainfm's tiles
        np.testing.assert_array_equal(tile, ours[i]["image"].permute(1, 2, 0).numpy())
    with h5py.File(out / "h5_files" / "pyramid.h5") as f, h5py.File(tiled / "features" / "pyramid.h5") as g:
        np.testing.assert_array_equal(f["features"][:], g["features"][:])
        assert f["coords"].shape == (n, 2)
        pt = torch.load(out / "pt_files" / "pyramid.pt", weights_only=True)
        assert pt.dtype == torch.float32 and torch.equal(pt, torch.from_numpy(g["features"][:]))
    with h5py.File(out / "patches" / "pyramid.h5") as f:
        a = f["coords"].attrs
        assert list(a["downsample"]) == [4.0, 4.0] and list(a["level_dim"]) == list(
            openslide.OpenSlide(str(pyramid)).level_dimensions[1]
        )

"""The streaming tile dataset: pixels equal to OpenSlide's, per-process handles, DataLoader workers, balanced
sampling across slides."""

import pickle
from itertools import islice

import numpy as np
import openslide
import pytest
import torch
from domainfm.data.collate import collate_samples
from domainfm.data.sampling import StreamSampler
from domainfm.errors import DataError
from domainfm.pathology.datasets import SlideTileDataset
from domainfm.pathology.tiling import TilingParams, tile_slides
from torch.utils.data import DataLoader, Subset


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, cmu_slide, pyramid):
    out = tmp_path_factory.mktemp("tiled")
    tile_slides([cmu_slide], out, progress=False)
    tile_slides([pyramid], out, TilingParams(tile_px=128), progress=False)  # 144 tiles of 128 px
    return out, {"CMU-1-Small-Region": cmu_slide, "pyramid": pyramid}


def test_items_are_the_slide_pixels(tiled):
    out, slides = tiled
    with pytest.raises(DataError, match=r"tiles of \[128, 256\] px"):
        SlideTileDataset(out, slides)
    ds = SlideTileDataset(out, slides, size=256)  # the pyramid's 128 px tiles are read out at 256 px
    n_cmu = len(ds.slides[0].coords)
    assert [s.name for s in ds.slides] == ["CMU-1-Small-Region", "pyramid"] and len(ds) == n_cmu + 144
    handle = openslide.OpenSlide(str(slides["CMU-1-Small-Region"]))
    for i in (0, n_cmu - 1):  # the last tile runs past the slide's bottom edge (y + 256 > 2967)
        item = ds[i]
        x, y = item["meta"]["coords"]
        raw = np.asarray(handle.read_region((x, y), 0, (256, 256)).convert("RGB"), dtype=np.float32) / 255
        inside = 2967 - y
        assert item["image"].shape == (3, 256, 256) and item["image"].dtype == torch.float32
        expected = torch.from_numpy(raw).permute(2, 0, 1)[:, :inside]
        torch.testing.assert_close(item["image"][:, :inside], expected, rtol=0, atol=1e-6)
        assert (item["image"][:, inside:] == 1.0).all()  # beyond the scan: white, not OpenSlide's transparent black
        assert item["meta"]["slide"] == "CMU-1-Small-Region"
    assert ds.describe(n_cmu).startswith(str(slides["pyramid"]) + " tile (")


def test_transform_and_missing_slide(tiled):
    out, slides = tiled
    ds = SlideTileDataset(out, slides, transform=lambda x: x[:1] * 2, names=["pyramid"])
    assert ds[0]["image"].shape == (1, 128, 128) and len(ds) == 144
    raw = SlideTileDataset(out, slides, names=["pyramid"], uint8=True)[5]["image"]
    assert raw.dtype == torch.uint8 and raw.shape == (3, 128, 128)
    torch.testing.assert_close(raw.float() / 255, SlideTileDataset(out, slides, names=["pyramid"])[5]["image"])
    with pytest.raises(DataError, match="no slide named 'pyramid'"):
        SlideTileDataset(out, {"CMU-1-Small-Region": slides["CMU-1-Small-Region"]}, size=64)


def test_pickles_without_handles_and_reopens_per_process(tiled):
    out, slides = tiled
    ds = SlideTileDataset(out, slides, size=128)
    first = ds[3]["image"]
    assert len(ds._open) == 1
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # paths and coordinates only
    clone = pickle.loads(blob)
    assert len(clone._open) == 0
    torch.testing.assert_close(clone[3]["image"], first)
    # fork-started workers inherit the parent's open handle and must open their own
    indices = list(range(0, len(ds), 7))
    loader = DataLoader(Subset(ds, indices), batch_size=4, num_workers=2, collate_fn=collate_samples)
    images = torch.cat([b["image"] for b in loader])
    torch.testing.assert_close(images, torch.stack([ds[i]["image"] for i in indices]))


def test_sample_weights_balance_the_slides(tiled):
    out, slides = tiled
    ds = SlideTileDataset(out, slides, size=64)
    n_cmu, n_pyr = (len(s.coords) for s in ds.slides)
    weights = ds.sample_weights()
    assert weights[:n_cmu].sum().item() == pytest.approx(1.0) and weights[n_cmu:].sum().item() == pytest.approx(1.0)
    sampler = StreamSampler(len(ds), batch_size=50, seed=0, weights=weights)
    drawn = np.array([i for i, _ in islice(iter(sampler), 4000)])
    share = (drawn < n_cmu).mean()
    assert abs(share - 0.5) < 0.05, share  # uniform over tiles would give n_cmu / len(ds)
    assert abs(n_cmu / len(ds) - 0.5) > 0.05

"""The streaming tile dataset: pixels equal to OpenSlide's, per-process handles, DataLoader workers, balanced
sampling across slides."""

import pickle
from itertools import islice

import numpy as np
import openslide
import pytest
import torch
from domainfm.data.collate import collate_samples
from domainfm.data.sampling import SeededDataset, StreamSampler
from domainfm.errors import DataError
from domainfm.pathology.datasets import SlideTileDataset
from domainfm.pathology.tiling import SlideJob, TilingParams, tile_slides
from PIL import Image
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
        raw = np.array(handle.read_region((x, y), 0, (256, 256)).convert("RGB"))
        inside = 2967 - y
        assert item["image"].shape == (3, 256, 256) and item["image"].dtype == torch.uint8
        assert torch.equal(item["image"][:, :inside], torch.from_numpy(raw).permute(2, 0, 1)[:, :inside])
        assert (item["image"][:, inside:] == 255).all()  # beyond the scan: white, not OpenSlide's transparent black
        assert item["meta"]["slide"] == "CMU-1-Small-Region"
    assert ds.describe(n_cmu).startswith(str(slides["pyramid"]) + " tile (")


def test_in_place_transforms_never_reach_the_slide(tiled, shared_data, tmp_path):
    # OpenSlide reads are Pillow's read-only buffers (copied); a plain image's read is a fresh array (used as is)
    png = shared_data / "pathology" / "TCGA-HE-7130_1000px.png"
    tile_slides([SlideJob(png, mpp=0.5)], tmp_path, TilingParams(min_tissue=0.0), progress=False)
    out, slides = tiled
    for ds in (SlideTileDataset(out, slides, size=256), SlideTileDataset(tmp_path, [png])):
        image = ds[0]["image"]
        expected = image.clone()
        image.zero_()  # what an in-place transform does
        assert torch.equal(ds[0]["image"], expected) and expected.float().std() > 10


def test_transform_and_missing_slide(tiled):
    out, slides = tiled
    ds = SlideTileDataset(out, slides, transform=lambda x: x[:1] * 2, names=["pyramid"])
    assert ds[0]["image"].shape == (1, 128, 128) and len(ds) == 144
    raw = SlideTileDataset(out, slides, names=["pyramid"])[5]["image"]
    assert raw.dtype == torch.uint8 and raw.shape == (3, 128, 128)
    as_float = SlideTileDataset(out, slides, names=["pyramid"], uint8=False)[5]["image"]
    assert as_float.dtype == torch.float32
    torch.testing.assert_close(raw.float() / 255, as_float, rtol=0, atol=1e-7)  # x * (1/255) vs x / 255
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
    batches = [b["image"] for b in loader]
    # uint8 tiles are handed over channels-last (no transpose per tile), in shared memory
    assert all(b.is_contiguous(memory_format=torch.channels_last) and b.is_shared() for b in batches)
    assert torch.equal(torch.cat(batches), torch.stack([ds[i]["image"] for i in indices]))


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


def test_open_slides_share_one_cache_per_process(tiled, monkeypatch):
    """All handles a process opens get the same OpenSlide cache (not 32 MiB each); without a cache the pixels are
    the same."""
    from domainfm.pathology.slide import Slide

    out, slides = tiled
    attached = []
    monkeypatch.setattr(Slide, "set_cache", lambda self, cache: attached.append(cache))
    ds = SlideTileDataset(out, slides, size=128, cache_mib=8)
    n_cmu = len(ds.slides[0].coords)
    ds[0], ds[n_cmu]
    assert len(attached) == 2 and attached[0] is attached[1] is ds._cache
    assert pickle.loads(pickle.dumps(ds))._cache is None  # each worker makes its own
    monkeypatch.undo()
    uncached = SlideTileDataset(out, slides, size=128, cache_mib=0)
    assert all(torch.equal(uncached[i]["image"], ds[i]["image"]) for i in (0, 3, n_cmu + 5))


def test_threaded_batches_equal_item_by_item(tiled):
    """``threads=3``: a DataLoader batch is read by three threads (0 and 2 workers) and equals the items read one
    by one, in order; the transform runs in the calling thread, in index order (its random draws stay seeded)."""
    out, slides = tiled
    plain = SlideTileDataset(out, slides, size=128)
    calls = []
    threaded = SlideTileDataset(out, slides, size=128, threads=3, max_open=1, transform=lambda x: calls.append(1) or x)
    indices = list(range(0, len(plain), 5))
    expected = torch.stack([plain[i]["image"] for i in indices])
    for workers in (0, 2):
        loader = DataLoader(Subset(threaded, indices), batch_size=8, num_workers=workers, collate_fn=collate_samples)
        batches = list(loader)
        assert torch.equal(torch.cat([b["image"] for b in batches]), expected)
        assert [m["coords"] for b in batches for m in b["meta"]] == [plain[i]["meta"]["coords"] for i in indices]
    assert threaded._pool is not None and threaded._pool._max_workers == 3  # the in-process loader used threads
    assert len(calls) == len(indices)  # the transform ran once per item in this process (workers: their own)
    torch.manual_seed(0)
    noisy = SlideTileDataset(out, slides, size=128, threads=3, transform=lambda x: x + torch.randint(0, 2, x.shape))
    first = torch.stack([s["image"] for s in noisy.__getitems__(indices)])
    torch.manual_seed(0)
    assert torch.equal(first, torch.stack([noisy[i]["image"] for i in indices]))  # same draws, same order


CMU = "CMU-1-Small-Region"


def test_regions_are_the_slide_pixels_around_the_tile(tiled):
    """``region_px=512`` on the real Aperio slide (256 px tiles at 0.5 um/px, level 0 used as is): each item is the
    512 x 512 level-0 box centred on its tile, shifted inside the 2220 x 2967 slide, equal to OpenSlide's pixels; it
    holds the whole in-slide part of the tile. ``region_px=256`` is the tile itself."""
    out, slides = tiled
    plain = SlideTileDataset(out, slides, names=[CMU])
    regions = SlideTileDataset(out, slides, names=[CMU], region_px=512)
    handle = openslide.OpenSlide(str(slides[CMU]))
    width, height = handle.dimensions
    n = len(plain)
    shifted = 0
    for i in sorted({0, 1, n // 2, n - 2, n - 1}):
        item = regions[i]
        x, y = item["meta"]["coords"]
        x0, y0, side0 = item["meta"]["region"]
        assert side0 == 512 and item["image"].shape == (3, 512, 512)
        assert (x0, y0) == (min(max(x - 128, 0), width - 512), min(max(y - 128, 0), height - 512))
        shifted += (x0, y0) != (x - 128, y - 128)
        raw = np.array(handle.read_region((x0, y0), 0, (512, 512)).convert("RGB"))
        assert torch.equal(item["image"], torch.from_numpy(raw).permute(2, 0, 1))
        tile = plain[i]["image"]
        h, w = min(256, height - y), min(256, width - x)  # the part of the tile inside the scan
        assert torch.equal(item["image"][:, y - y0 : y - y0 + h, x - x0 : x - x0 + w], tile[:, :h, :w])
    assert shifted >= 1  # the last tile (past the bottom edge) moved its region up
    same = SlideTileDataset(out, slides, names=[CMU], region_px=[256])
    assert torch.equal(same[n - 1]["image"], plain[n - 1]["image"]) and same[n - 1]["meta"]["region"][2] == 256
    # size=128: every box read out at half its side; the region is the 512 px box resampled to 256 px (Pillow's
    # bilinear filter, as slides are resampled)
    item = SlideTileDataset(out, slides, names=[CMU], size=128, region_px=512)[0]
    x0, y0, _ = item["meta"]["region"]
    box = handle.read_region((x0, y0), 0, (512, 512)).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR)
    diff = item["image"].float() - torch.from_numpy(np.array(box)).permute(2, 0, 1).float()
    assert item["image"].shape == (3, 256, 256) and diff.abs().mean() < 0.5 and diff.abs().max() <= 2


def test_region_mix_is_seeded_per_sample(tiled):
    """The side each sample reads is a function of its seed (the engine's ``torch.manual_seed(sample seed)``) and
    index: 24.3 % of 512 px regions over many draws, the same side again for the same seed, the same items in loader
    workers and threaded batches, and no draw taken from the transform's random stream."""
    out, slides = tiled
    ds = SlideTileDataset(out, slides, names=[CMU], region_px=[256, 512], region_p=[0.757, 0.243])
    sides = []
    for seed in range(400):
        torch.manual_seed(seed)
        sides += [ds.region_side(i) for i in range(10)]
    sides = np.array(sides)
    assert set(sides.tolist()) == {256, 512} and abs((sides == 512).mean() - 0.243) < 0.03
    torch.manual_seed(5)
    again = [ds.region_side(i) for i in range(10)]
    assert again == sides[50:60].tolist()  # seed 5, indices 0..9
    # the transform's draws are the same with and without the region mix
    draws = []
    noisy = SlideTileDataset(
        out, slides, names=[CMU], region_px=[256, 512], transform=lambda x: draws.append(torch.rand(())) or x
    )
    plain = SlideTileDataset(out, slides, names=[CMU], transform=lambda x: draws.append(torch.rand(())) or x)
    torch.manual_seed(11)
    big = next(i for i in range(len(ds)) if ds.region_side(i) == 512)
    for dataset in (noisy, plain):
        torch.manual_seed(11)
        dataset[big]
    assert draws[0] == draws[1]
    # the engine's path: SeededDataset in loader workers gives the items this process reads for the same keys
    keys = [(i % len(ds), 1000 + i) for i in range(12)]
    seeded = SeededDataset(ds)
    expected = [seeded[k] for k in keys]
    assert {e["image"].shape[-1] for e in expected} == {256, 512}
    for e, (i, seed) in zip(expected, keys):
        torch.manual_seed(seed)
        assert e["image"].shape[-1] == ds.region_side(i) and e["meta"]["region"][2] == ds.region_side(i)
    loader = DataLoader(seeded, sampler=keys, batch_size=4, num_workers=2, collate_fn=list)
    got = [item for batch in loader for item in batch]
    assert all(torch.equal(g["image"], e["image"]) for g, e in zip(got, expected)) and len(got) == len(keys)
    # threads > 1: a batch read by three threads equals the items read one by one
    threaded = SlideTileDataset(out, slides, names=[CMU], region_px=[256, 512], region_p=[0.757, 0.243], threads=3)
    torch.manual_seed(2)
    batch = threaded.__getitems__(list(range(len(ds))))
    assert {b["image"].shape[-1] for b in batch} == {256, 512}
    torch.manual_seed(2)
    assert all(torch.equal(b["image"], ds[i]["image"]) for i, b in enumerate(batch))


def test_region_options_are_checked(tiled):
    out, slides = tiled
    with pytest.raises(DataError, match="one per region_px"):
        SlideTileDataset(out, slides, names=[CMU], region_px=[256, 512], region_p=[1.0])
    with pytest.raises(DataError, match="without region_px"):
        SlideTileDataset(out, slides, names=[CMU], region_p=[1.0])
    with pytest.raises(DataError, match="at least 1 pixel"):
        SlideTileDataset(out, slides, names=[CMU], region_px=[0])

"""Stain transforms on real H&E tiles: the torch colour deconvolution against skimage, HED jitter against DIAG's
reference computed with skimage in NumPy, Macenko against torchstain."""

import numpy as np
import pytest
import torch
import torchstain
from domainfm.pathology.stain import HEDJitter, MacenkoNormalize, hed_to_rgb, rgb_to_hed
from PIL import Image
from skimage.color import hed2rgb, rgb2hed
from torch.nn.functional import cosine_similarity

LN_1E6 = np.log(1e6)  # rgb2hed's unit is an optical density divided by ln(1e6)


def load(path, size=None) -> torch.Tensor:
    with Image.open(path) as im:
        array = np.array(im.convert("RGB"))
    array = array[:size, :size] if size else array
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def load_uint8(path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def kather_tile(shared_data, cls: str, k: int = 0):
    return sorted((shared_data / "pathology" / "kather2016_tiles" / cls).glob("*.tif"))[k]


def hed_reference(rgb: np.ndarray, a, b) -> np.ndarray:
    """DIAG's ``HedColorAugmenter.transform`` on an ``H x W x 3`` float image: skimage's rgb2hed, per stain
    ``hed * (1 + sigma) + bias`` (here ``a = 1 + sigma``, ``b = bias``), hed2rgb, clip to [0, 1]; float64."""
    hed = rgb2hed(rgb)
    hed = hed * np.asarray(a, dtype=np.float64) + np.asarray(b, dtype=np.float64)
    return np.clip(hed2rgb(hed), 0.0, 1.0)


def hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).double().numpy()


@pytest.fixture(scope="module")
def he(shared_data):
    return load(shared_data / "pathology" / "TCGA-HE-7130_1000px.png", 256)


@pytest.fixture(scope="module")
def kather(shared_data):
    return load(kather_tile(shared_data, "01_TUMOR"))


def test_colour_deconvolution_matches_skimage(he):
    rgb = he.permute(1, 2, 0).numpy()
    np.testing.assert_allclose(rgb_to_hed(he).permute(1, 2, 0).numpy(), rgb2hed(rgb), atol=1e-5)
    hed = rgb2hed(rgb)
    back = hed_to_rgb(torch.from_numpy(hed).permute(2, 0, 1).float())
    np.testing.assert_allclose(back.permute(1, 2, 0).numpy(), hed2rgb(hed), atol=1e-5)
    # without skimage's clamp of negative densities the round trip is exact
    torch.testing.assert_close(hed_to_rgb(rgb_to_hed(he, clamp=False)), he, atol=1e-5, rtol=0)


def test_hed_jitter_matches_the_reference(shared_data, he):
    """Fixed factors and offsets: our jitter equals skimage rgb2hed -> hed * a + b -> hed2rgb computed in NumPy
    (float64), on real H&E tiles as they stream (uint8), one triple per image of a batch too."""
    tiles = [load_uint8(kather_tile(shared_data, c)) for c in ("01_TUMOR", "02_STROMA", "06_MUCOSA")]
    a = torch.tensor([[1.04, 0.97, 1.02], [0.95, 1.05, 1.0], [1.0, 1.0, 0.96]])
    b = torch.tensor([[0.03, -0.04, 0.01], [-0.05, 0.05, 0.0], [0.0, 0.02, -0.03]])
    jitter = HEDJitter()
    for tile, ai, bi in zip(tiles, a, b):
        ref = hed_reference(tile.permute(1, 2, 0).numpy() / 255.0, ai.numpy(), bi.numpy())
        np.testing.assert_allclose(hwc(jitter.apply(tile, ai, bi)), ref, atol=1e-4, rtol=0)  # measured 2e-7
    batch = jitter.apply(torch.stack(tiles), a, b)
    for out, tile, ai, bi in zip(batch, tiles, a, b):
        np.testing.assert_allclose(hwc(out), hed_reference(hwc(tile) / 255.0, ai.numpy(), bi.numpy()), atol=1e-4)
    # float input in [0, 1] (a 256 px crop of the TCGA region): same
    ref = hed_reference(hwc(he), a[0].numpy(), b[0].numpy())
    np.testing.assert_allclose(hwc(jitter.apply(he, a[0], b[0])), ref, atol=1e-4)


def test_hed_bias_is_in_rgb2hed_units(kather):
    """beta = 0.05 on every stain changes the tumour tile as much as the reference does (0.155 per channel on
    average); in natural-log OD units (the reference's offset divided by ln 1e6, our earlier reading) it would be
    about 0.017."""
    x = hwc(kather)
    base = np.clip(hed2rgb(rgb2hed(x)), 0, 1)
    ref = np.abs(hed_reference(x, 1.0, 0.05) - base).mean()
    ours = np.abs(hwc(HEDJitter().apply(kather, torch.ones(3), torch.full((3,), 0.05))) - base).mean()
    ln_od = np.abs(hed_reference(x, 1.0, 0.05 / LN_1E6) - base).mean()
    assert abs(ours - ref) < 1e-4
    assert 0.1 < ref < 0.3 and ln_od < 0.03 and ref > 8 * ln_od, (ref, ln_od)


def test_hed_jitter_draws(kather):
    """``a ~ U(1 - alpha, 1 + alpha)`` and ``b ~ U(-beta, beta)`` per image and stain, from torch's (per-sample
    seeded) RNG: the seeded call equals :meth:`HEDJitter.apply` with the same draws made by hand."""
    jitter = HEDJitter(alpha=(0.1, 0.2, 0.0), beta=0.05)
    torch.manual_seed(7)
    u, v = torch.rand(3), torch.rand(3)
    a = 1 + (2 * u - 1) * torch.tensor([0.1, 0.2, 0.0])
    b = (2 * v - 1) * 0.05
    torch.manual_seed(7)
    out = jitter(kather)
    torch.testing.assert_close(out, jitter.apply(kather, a, b))
    assert out.shape == kather.shape and out.min() >= 0 and out.max() <= 1 and (out - kather).abs().mean() > 1e-3
    # batches: one draw per image
    batch = HEDJitter()(torch.stack([kather, kather]))
    assert batch.shape == (2, *kather.shape) and (batch[0] - batch[1]).abs().mean() > 1e-4
    # p: the share of jittered images (the skipped ones come back unchanged)
    changed = []
    for seed in range(200):
        torch.manual_seed(seed)
        changed.append(not torch.equal(HEDJitter(p=0.3)(kather), kather))
    assert abs(np.mean(changed) - 0.3) < 0.1


def test_hed_jitter_clamp(he):
    """``clamp=True`` (the reference): negative stain amounts go to 0 first, so zero jitter is skimage's lossy round
    trip; ``clamp=False`` keeps them and zero jitter is the identity. Scaling only the eosin amount (unclamped)
    leaves H and D as they were and multiplies E by the factor."""
    zero = HEDJitter(alpha=0, beta=0)
    np.testing.assert_allclose(hwc(zero(he)), np.clip(hed2rgb(rgb2hed(hwc(he))), 0, 1), atol=1e-5)
    assert (zero(he) - he).abs().max() > 0.1  # the clamp alone moves some pixels of this tile
    torch.testing.assert_close(HEDJitter(alpha=0, beta=0, clamp=False)(he), he, atol=1e-5, rtol=0)
    out = rgb_to_hed(HEDJitter(clamp=False).apply(he, torch.tensor([1.0, 1.2, 1.0]), torch.zeros(3)), clamp=False)
    ref = rgb_to_hed(he, clamp=False)
    inside = (ref[1] > 0.02) & (out.amax(0) < 0.5)  # away from the [0, 1] clip of hed2rgb
    ratio = (out[1] / ref[1])[inside]
    assert ratio.std() < 1e-3 and abs(ratio.mean() - 1.2) < 1e-3
    torch.testing.assert_close(out[[0, 2]][:, inside], ref[[0, 2]][:, inside], atol=2e-3, rtol=0)


def test_macenko_estimates_haematoxylin_and_eosin(he):
    stains, max_c = MacenkoNormalize().estimate(he)
    ruifrok = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    ruifrok = ruifrok / ruifrok.norm(dim=1, keepdim=True)
    h, e = stains[:, 0], stains[:, 1]
    assert h @ ruifrok[0] > h @ ruifrok[1] and e @ ruifrok[1] > e @ ruifrok[0]  # columns: H then E
    assert torch.allclose(stains.norm(dim=0), torch.ones(2), atol=1e-5) and (max_c > 0).all()


def test_macenko_normalises_to_the_reference(he, kather):
    norm = MacenkoNormalize.fit(he)
    assert (norm(he) - he).abs().mean() < 0.03  # a tile normalised to its own stains barely changes
    before, _ = norm.estimate(kather)
    after, _ = norm.estimate(norm(kather))
    assert cosine_similarity(after.T, norm.stain_matrix.T).min() > 0.995
    assert cosine_similarity(before.T, norm.stain_matrix.T).min() < 0.99
    blank = torch.ones(3, 32, 32)
    assert torch.equal(norm(blank), blank)  # no tissue: unchanged
    assert norm(torch.stack([kather, kather])).shape == (2, *kather.shape)


def test_macenko_agrees_with_torchstain(shared_data):
    """Fit on the TCGA region, normalise Kather tiles of four classes; torchstain 1.4.1's torch backend (a port of
    HEnorm_python) is the independent implementation. Stain vectors: same order (H, E) and signs, within 5e-4 (we
    measured <= 2e-4); 99th-percentile concentrations within 0.1 % (measured <= 0.03 %): torchstain takes
    nearest-rank percentiles in float32, we interpolate (as NumPy / HEnorm_python) in float64. Images: torchstain
    truncates to integers, so ``255 * ours - torchstain`` lies in [0, 1) plus the percentile difference (measured
    -0.14 .. 1.07 grey levels); after flooring ours, at most one level apart on under 3 % of the pixels."""
    region = load_uint8(shared_data / "pathology" / "TCGA-HE-7130_1000px.png")[:, :256, :256].contiguous()
    ours = MacenkoNormalize.fit(region)
    theirs = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    theirs.fit(region)
    torch.testing.assert_close(ours.stain_matrix, theirs.HERef, atol=5e-4, rtol=0)
    torch.testing.assert_close(ours.max_concentrations, theirs.maxCRef, rtol=1e-3, atol=0)
    for cls in ("01_TUMOR", "02_STROMA", "04_LYMPHO", "06_MUCOSA"):
        tile = load_uint8(kather_tile(shared_data, cls))
        one = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        one.fit(tile)  # torchstain's estimate for this tile
        stains, max_c = MacenkoNormalize().estimate(tile)
        torch.testing.assert_close(stains, one.HERef, atol=5e-4, rtol=0)
        torch.testing.assert_close(max_c, one.maxCRef, rtol=1e-3, atol=0)
        expected, _, _ = theirs.normalize(tile, stains=False)  # H x W x 3 int, truncated
        got = ours(tile).permute(1, 2, 0).double() * 255
        diff = got - expected.double()
        assert diff.min() > -0.25 and diff.max() < 1.25, (cls, diff.min(), diff.max())
        off = (got.floor() - expected.double()).abs()
        assert off.max() <= 1 and off.mean() < 0.03, (cls, off.mean())
        assert (got - tile.permute(1, 2, 0).double()).abs().mean() > 2  # the normalisation did change the tile


def test_uint8_tiles_are_converted_first(he, kather):
    """Tiles stream as uint8: both transforms treat them as the same image in [0, 1] and return floats."""
    tile = (he * 255).round().to(torch.uint8)
    as_float = tile.float() / 255
    torch.manual_seed(3)
    jittered = HEDJitter()(tile)
    torch.manual_seed(3)
    assert jittered.dtype == torch.float32 and torch.equal(jittered, HEDJitter()(as_float))
    assert HEDJitter(p=0.0)(tile).dtype == torch.float32  # skipped: still converted, one output type
    norm = MacenkoNormalize.fit(kather)
    torch.testing.assert_close(norm(tile), norm(as_float))
    assert norm.estimate(tile) is not None

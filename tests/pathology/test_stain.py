"""Stain transforms on real H&E tiles: the torch colour deconvolution against skimage, HED jitter, Macenko."""

import numpy as np
import pytest
import torch
from domainfm.pathology.stain import HEDJitter, MacenkoNormalize, hed_to_rgb, rgb_to_hed
from PIL import Image
from skimage.color import hed2rgb, rgb2hed
from torch.nn.functional import cosine_similarity


def load(path, size=None) -> torch.Tensor:
    with Image.open(path) as im:
        array = np.array(im.convert("RGB"))
    array = array[:size, :size] if size else array
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def he(shared_data):
    return load(shared_data / "pathology" / "TCGA-HE-7130_1000px.png", 256)


@pytest.fixture(scope="module")
def kather(shared_data):
    return load(next((shared_data / "pathology" / "kather2016_tiles" / "01_TUMOR").glob("*.tif")))


def test_colour_deconvolution_matches_skimage(he):
    rgb = he.permute(1, 2, 0).numpy()
    np.testing.assert_allclose(rgb_to_hed(he).permute(1, 2, 0).numpy(), rgb2hed(rgb), atol=1e-5)
    hed = rgb2hed(rgb)
    back = hed_to_rgb(torch.from_numpy(hed).permute(2, 0, 1).float())
    np.testing.assert_allclose(back.permute(1, 2, 0).numpy(), hed2rgb(hed), atol=1e-5)
    # without skimage's clamp of negative densities the round trip is exact
    torch.testing.assert_close(hed_to_rgb(rgb_to_hed(he, clamp=False)), he, atol=1e-5, rtol=0)


def test_hed_jitter(he):
    torch.testing.assert_close(HEDJitter(alpha=0, beta=0)(he), he, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    a = HEDJitter()(he)
    torch.manual_seed(0)
    torch.testing.assert_close(HEDJitter()(he), a)  # draws from torch's (per-sample seeded) RNG
    assert a.shape == he.shape and a.min() >= 0 and a.max() <= 1
    change = (a - he).abs().mean().item()
    torch.manual_seed(0)
    strong = (HEDJitter(alpha=0.2, beta=0.2)(he) - he).abs().mean().item()
    assert 0.002 < change < 0.05 and strong > 2 * change
    # only the eosin amount scaled by 1.2: in stain space H and D are unchanged, E is 1.2x
    e_only = HEDJitter(alpha=(0, 0.2, 0), beta=0)
    torch.manual_seed(1)
    out = rgb_to_hed(e_only(he), clamp=False)
    ref = rgb_to_hed(he, clamp=False)
    ratio = (out[1] / ref[1])[ref[1].abs() > 0.02]
    assert ratio.std() < 1e-3 and 0.8 <= ratio.mean() <= 1.2 and abs(ratio.mean() - 1) > 1e-3
    torch.testing.assert_close(out[[0, 2]], ref[[0, 2]], atol=2e-3, rtol=0)
    # batches: one draw per image
    batch = HEDJitter()(torch.stack([he, he]))
    assert batch.shape == (2, 3, 256, 256) and (batch[0] - batch[1]).abs().mean() > 1e-4


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

"""I2P-MAE's projection and back-projection against a point-by-point re-implementation of the official
`proj2img` / `I2P` (models/I2P_MAE.py) on a real cloud (the bunny PLY, unit sphere)."""

import math

import numpy as np
import torch
from domainfm.three_d.depth_projection import VIEWS, back_project, project_depth, to_model_input
from domainfm.three_d.points import normalize_unit_sphere, read_points

from tests.conftest import SHARED_DATA


def _official_view(cloud: np.ndarray, size: int):
    """One view of one cloud, a loop over points and the 25 splat offsets (the official arithmetic, float64)."""
    plane, value = cloud[:, :2], cloud[:, 2]
    lo = plane.min(0)
    grid = (plane.max(0) - lo).max() / (size - 3)
    base = np.floor((plane - lo) / grid)
    offs = [(i, j) for i in range(-2, 3) for j in range(-2, 3)]
    dense = np.array([[base[p, 0] + i + 1, base[p, 1] + j + 1] for p in range(len(cloud)) for i, j in offs])
    centre = np.floor((dense.max(0) + dense.min(0)) / 2)
    shift = size / 2 - centre - 1
    image = np.zeros((size, size))
    for k, (r, c) in enumerate(dense + shift):
        r, c = r + (r < 0) - (r > size - 1), c + (c < 0) - (c > size - 1)
        image[int(r), int(c)] += value[k // 25]
    return 1 / (1 + np.exp(-image)), lo, grid, shift


def test_projection_and_back_projection_are_the_official_ones():
    xyz = read_points(SHARED_DATA / "three_d" / "pcu_bunny.ply", surface_points=0).xyz
    cloud = normalize_unit_sphere(xyz[np.random.default_rng(0).choice(len(xyz), 300, replace=False)])
    cloud = cloud.astype(np.float64)
    points = torch.from_numpy(cloud)[None]
    images, proj = project_depth(points, size=64)
    assert images.shape == (1, 3, 64, 64)
    for v, axes in enumerate(VIEWS):
        expected, lo, grid, shift = _official_view(cloud[:, list(axes)], 64)
        np.testing.assert_allclose(images[0, v].numpy(), expected, atol=1e-12)
        np.testing.assert_allclose(proj.minimum[0, v].numpy(), lo)
        assert math.isclose(float(proj.grid[0, v]), grid) and np.array_equal(proj.offset[0, v].numpy(), shift)
    assert float(images[0, 0, 0, 0]) == 0.5  # an empty pixel
    x = to_model_input(images.float())
    assert x.shape == (3, 3, 64, 64) and torch.allclose(x[0, 1, 0, 0], torch.tensor((0.5 - 0.456) / 0.224))

    # a map whose value is its own pixel index, at full size (bicubic upsampling of a same-size map is exact):
    # each point reads the pixel at the centre of its splat
    index_map = torch.arange(64 * 64, dtype=torch.float64).reshape(1, 1, 1, 64, 64).expand(1, 3, 1, 64, 64)
    read = back_project(points[:, :10], index_map.contiguous(), proj)
    for v, axes in enumerate(VIEWS):
        _, lo, grid, shift = _official_view(cloud[:, list(axes)], 64)
        pix = np.floor((cloud[:10][:, list(axes)[:2]] - lo) / grid) + 1 + shift
        np.testing.assert_allclose(read[0, v, :, 0].numpy(), pix[:, 0] * 64 + pix[:, 1], atol=1e-6)

    # a coarse map (a ViT's patch grid): the official bicubic upsampling to S x S, read at the points' pixels
    coarse = torch.randn(1, 3, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    up = torch.nn.functional.interpolate(coarse[0], size=(64, 64), mode="bicubic").reshape(3, 2, -1)
    read = back_project(points, coarse, proj)
    for v, axes in enumerate(VIEWS):
        _, lo, grid, shift = _official_view(cloud[:, list(axes)], 64)
        pix = np.floor((cloud[:, list(axes)[:2]] - lo) / grid) + 1 + shift
        flat = torch.from_numpy(pix[:, 0] * 64 + pix[:, 1]).long()
        torch.testing.assert_close(read[0, v], up[v][:, flat].T, rtol=0, atol=1e-9)


def test_the_2d_guidance_reads_the_last_blocks_class_attention_and_masks_by_it():
    import timm
    from domainfm.three_d.image_guidance import attention_and_features, guided_mask

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=0).eval()
    images = torch.randn(2, 3, 64, 64)
    captured = {}
    last = vit.blocks[-1].attn
    last.fused_attn = False  # timm's explicit path: attn_drop receives the softmaxed attention
    last.attn_drop.register_forward_hook(lambda m, inp, out: captured.setdefault("attn", inp[0]))
    with torch.no_grad():
        tokens = vit.forward_features(images)
    saliency, features = attention_and_features(vit, images)
    expected = captured["attn"].mean(1)[:, 0, 1:].reshape(2, 4, 4)  # heads averaged, class row, patch keys
    torch.testing.assert_close(saliency, expected)
    torch.testing.assert_close(features, tokens[:, 1:].transpose(1, 2).reshape(2, 192, 4, 4))

    sal = torch.zeros(500, 64)
    sal[:, 7] = 50.0  # one token the 2D model attends to overwhelmingly
    mask = guided_mask(sal, 0.8, torch.Generator().manual_seed(0))
    assert (mask.sum(1) == 51).all() and not mask[:, 7].any()  # 13 of 64 visible, token 7 always among them
    others = (~mask[:, [i for i in range(64) if i != 7]]).float().mean()
    assert abs(float(others) - 12 / 63) < 0.01  # the rest uniformly

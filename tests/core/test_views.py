"""View transforms: any channel count, per-view parameters, RGB-only photometric jitter."""

import pytest
import torch
from domainfm.data.collate import collate_samples
from domainfm.data.masking import IBOTMask
from domainfm.data.transforms import MultiCropView, Normalize, RandomView, RGBPhotometric, TwoViews, to_float
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

BICUBIC = InterpolationMode.BICUBIC


def test_multicrop_shapes_params_and_masks_for_13_bands():
    torch.manual_seed(0)
    image = torch.rand(13, 60, 50)
    view = MultiCropView(
        32,
        [0.0] * 13,
        [1.0] * 13,
        local_size=16,
        n_local=3,
        return_params=True,
        masking=IBOTMask(4, prob=1.0, ratio=(0.25, 0.25)),
    )
    out = view({"image": image, "meta": {"path": "x"}})
    assert [t.shape for t in out["global_crops"]] == [(13, 32, 32)] * 2
    assert [t.shape for t in out["local_crops"]] == [(13, 16, 16)] * 3
    assert out["masks"].shape == (2, 16) and out["meta"] == {"path": "x"}
    # the parameters reproduce each view from the source image (mean 0, std 1: normalisation is the identity);
    # DINOv2's crops are bicubic (clamped to [0, 1], as PIL's)
    for crop, p in zip(out["global_crops"] + out["local_crops"], out["crop_params"]):
        ref = TF.resized_crop(
            image, p["top"], p["left"], p["height"], p["width"], list(p["size"]), BICUBIC, antialias=True
        ).clamp(0, 1)
        if p["hflip"]:
            ref = ref.flip(-1)
        torch.testing.assert_close(crop, ref)
    batch = collate_samples([out, view({"image": image, "meta": {"path": "y"}})])
    assert batch["global_crops"][0].shape == (2, 13, 32, 32) and batch["masks"].shape == (2, 2, 16)


def test_views_are_asymmetric_per_view_blur_and_solarise():
    """DINOv2 / BYOL / MoCo v3: global view 1 always blurred, view 2 rarely blurred and sometimes solarised, locals
    blurred half the time. Measured over many draws on a flat-plus-edge image: blur smooths the edge, solarisation
    maps the bright half x -> 1 - x. (The blur itself is torchvision's; it is replaced by a marker here, since
    with a small sigma it leaves no visible trace.)"""
    image = torch.zeros(3, 32, 32)
    image[:, :, 16:] = 0.9
    view = MultiCropView(
        32,
        [0.0] * 3,
        [1.0] * 3,
        local_size=32,
        n_local=1,
        global_scale=(1.0, 1.0),
        local_scale=(1.0, 1.0),
        hflip=0.0,
        global_blur=[1.0, 0.1],
        global_solarize=[0.0, 0.2],
        local_blur=0.5,
        interpolation="bilinear",
    )
    for extra in [*view.global_extras, view.local_extra]:
        extra.gaussian = lambda x: x * 0.5  # marker: 0.9 -> 0.45 (not solarised, then)
    torch.manual_seed(0)
    n, blurred, solarised = 400, torch.zeros(3), torch.zeros(3)
    for _ in range(n):
        out = view({"image": image})
        for i, crop in enumerate(out["global_crops"] + out["local_crops"]):
            bright = float(crop[0, 0, 31])
            blurred[i] += float(abs(bright - 0.45) < 1e-5 or abs(bright - 0.55) < 1e-5)
            solarised[i] += float(abs(bright - 0.1) < 1e-5 or abs(bright - 0.55) < 1e-5)
    rates_blur, rates_sol = (blurred / n).tolist(), (solarised / n).tolist()
    assert rates_blur[0] == 1.0 and abs(rates_blur[1] - 0.1) < 0.05 and abs(rates_blur[2] - 0.5) < 0.08
    assert rates_sol[0] == 0.0 and abs(rates_sol[1] - 0.2) < 0.06 and rates_sol[2] == 0.0
    with pytest.raises(ValueError, match="global_blur has 3 values for 2 views"):
        MultiCropView(8, [0.5], [0.2], global_blur=[1.0, 0.1, 0.5])
    two = TwoViews(16, [0.0] * 3, [1.0] * 3, blur=[1.0, 0.1], solarize=[0.0, 0.2])
    assert [e.blur for e in two.inner.global_extras] == [1.0, 0.1]
    assert [e.solarize for e in two.inner.global_extras] == [0.0, 0.2]


def test_two_views_differ_and_normalise():
    torch.manual_seed(1)
    out = TwoViews(16, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])({"image": torch.rand(3, 40, 40)})
    assert out["view1"].shape == out["view2"].shape == (3, 16, 16)
    assert not torch.equal(out["view1"], out["view2"])
    assert out["view1"].min() >= -2.0 - 1e-6 and out["view1"].max() <= 2.0 + 1e-6


def test_rgb_photometric_refuses_other_channel_counts():
    RGBPhotometric()(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="13-channel image; it only applies to RGB"):
        RGBPhotometric()(torch.rand(13, 8, 8))
    with pytest.raises(ValueError, match="1-channel"):
        MultiCropView(8, [0.5], [0.2], local_size=4, n_local=1, photometric=RGBPhotometric())(
            {"image": torch.rand(1, 9, 9)}
        )


def test_random_view_checks_normalisation_channels():
    with pytest.raises(ValueError, match="image has 1 channels, normalisation expects 3"):
        RandomView(8, [0.5] * 3, [0.2] * 3)(torch.rand(1, 10, 10))


def test_views_take_uint8_tiles_and_crop_before_converting():
    """Slide tiles stream as uint8: the view crops and resizes them in uint8, then converts to [0, 1] floats; the
    result matches the float pipeline within one grey level."""
    torch.manual_seed(0)
    tile = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    view = MultiCropView(
        32, [0.0] * 3, [1.0] * 3, local_size=16, n_local=2, return_params=True, interpolation="bilinear"
    )  # (bicubic in uint8 rounds between its two passes: up to 4 grey levels off the float result)
    out = view({"image": tile})
    for crop, p in zip(out["global_crops"] + out["local_crops"], out["crop_params"]):
        assert crop.dtype == torch.float32
        ref = TF.resized_crop(tile.float() / 255, p["top"], p["left"], p["height"], p["width"], list(p["size"]))
        ref = ref.flip(-1) if p["hflip"] else ref
        torch.testing.assert_close(crop, ref, rtol=0, atol=1 / 255 + 1e-6)  # within a grey level (integer weights)
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    torch.testing.assert_close(normalize(tile), (tile.float() / 255 - 0.5) / 0.25)
    assert to_float(tile).max() <= 1.0 and to_float(tile.float()) is not None
    with pytest.raises(ValueError, match="int16 image; views take uint8 or float"):
        to_float(tile.to(torch.int16))


def test_collate_stacks_channel_last_tiles_without_transposing():
    """``C x H x W`` views of ``H x W x C`` tiles (how slide tiles stream) batch channels-last, equal to a plain
    stack; contiguous images batch as before."""
    tiles = [torch.randint(0, 256, (5, 4, 3), dtype=torch.uint8) for _ in range(3)]
    views = [t.permute(2, 0, 1) for t in tiles]
    batch = collate_samples([{"image": v, "meta": i} for i, v in enumerate(views)])
    assert batch["image"].is_contiguous(memory_format=torch.channels_last) and batch["meta"] == [0, 1, 2]
    assert torch.equal(batch["image"], torch.stack([v.contiguous() for v in views]))
    plain = collate_samples([{"image": v.contiguous()} for v in views])["image"]
    assert plain.is_contiguous() and torch.equal(plain, batch["image"])

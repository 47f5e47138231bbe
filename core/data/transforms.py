"""Tensor view transforms for ``C x H x W`` images with any channel count (torchvision v2 underneath).

Each transform maps a sample dict to a sample dict, so datasets, views and mask generators compose. Images may be
float in [0, 1] or uint8 (as slide tiles stream): geometric steps run on what they get (uint8 crops and resizes
are the cheaper ones), and the image becomes float in [0, 1] before photometric steps and normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _interpolation(name: str) -> v2.InterpolationMode:
    modes = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
    if name not in modes:
        raise ValueError(f"interpolation={name!r}: use bilinear or bicubic")
    return modes[name]


def _per_view(value: float | Sequence[float] | None, n: int, what: str) -> list[float]:
    """One probability per view from a scalar or a list of ``n``."""
    if value is None:
        return [0.0] * n
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} values for {n} views; give one per view or a single value")
    return values


class BlurSolarize:
    """Gaussian blur with probability ``blur`` (kernel ``kernel``, sigma uniform in ``sigma``), then solarisation
    (``x -> 1 - x`` above 0.5) with probability ``solarize``: the per-view extras of BYOL/DINO/MoCo v3 views, for
    float images in [0, 1] of any channel count."""

    def __init__(self, blur: float = 0.0, solarize: float = 0.0, kernel: int = 9, sigma: Sequence[float] = (0.1, 2.0)):
        self.blur, self.solarize = float(blur), float(solarize)
        self.gaussian = v2.GaussianBlur(kernel, sigma=tuple(sigma))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.blur and float(torch.rand(())) < self.blur:
            image = self.gaussian(image)
        if self.solarize and float(torch.rand(())) < self.solarize:
            image = torch.where(image >= 0.5, 1.0 - image, image)
        return image

    def __repr__(self) -> str:
        return f"BlurSolarize(blur={self.blur}, solarize={self.solarize})"


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]; floating images pass unchanged. Other integer types have no agreed range."""
    if image.is_floating_point():
        return image
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    raise ValueError(f"got a {image.dtype} image; views take uint8 or float images in [0, 1]")


class RandomView:
    """Random resized crop + flips + per-channel normalisation: the basic SSL view for any modality."""

    def __init__(
        self,
        size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        vflip: float = 0.0,
        interpolation: str = "bilinear",
    ):
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        crop = v2.RandomResizedCrop(
            _pair(size),
            scale=tuple(scale),
            ratio=tuple(ratio),
            interpolation=_interpolation(interpolation),
            antialias=True,
        )
        ops: list[Any] = [crop]
        if hflip:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if vflip:
            ops.append(v2.RandomVerticalFlip(vflip))
        self.ops = v2.Compose(ops)
        self.normalize = Normalize(mean, std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.ops(image))


class Normalize:
    """``(x - mean) / std`` per channel; the channel count must match."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(list(std), dtype=torch.float32)[:, None, None]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``C x H x W`` or a batch ``B x C x H x W`` (float in [0, 1] or uint8), on any device."""
        if image.shape[-3] != self.mean.shape[0]:
            raise ValueError(f"image has {image.shape[-3]} channels, normalisation expects {self.mean.shape[0]}")
        return (to_float(image) - self.mean.to(image.device)) / self.std.to(image.device)


class ResizeView:
    """Deterministic evaluation view: resize (shorter side), centre crop, normalise."""

    def __init__(self, size: int | Sequence[int], mean: Sequence[float], std: Sequence[float], crop_pct: float = 1.0):
        h, w = _pair(size)
        self.ops = v2.Compose([v2.Resize(int(round(min(h, w) / crop_pct)), antialias=True), v2.CenterCrop((h, w))])
        self.normalize = Normalize(mean, std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.ops(image))


class CropParams(dict):
    """Where a view came from: ``top``, ``left``, ``height``, ``width`` (pixels of the source image), ``hflip``,
    ``vflip``, ``size`` (output ``(h, w)``)."""


def random_crop(
    image: torch.Tensor,
    size: tuple[int, int],
    scale: Sequence[float],
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    vflip: float = 0.0,
    interpolation: str = "bilinear",
) -> tuple[torch.Tensor, CropParams]:
    """Random resized crop + flips of a ``C x H x W`` tensor (any C), returning the crop parameters too.

    ``interpolation="bicubic"`` (DINOv2's and MAE's crops) clamps float output to [0, 1], as PIL does; a float
    image with values outside [0, 1] (normalised multispectral bands, CT in HU) is clamped to its own range."""
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2 import functional as TF

    top, left, h, w = RandomResizedCrop.get_params(image, list(scale), list(ratio))
    mode = _interpolation(interpolation)
    out = TF.resized_crop(image, top, left, h, w, list(size), interpolation=mode, antialias=True)
    if mode == v2.InterpolationMode.BICUBIC and out.is_floating_point():  # bicubic overshoots at edges
        low, high = min(0.0, float(image.min())), max(1.0, float(image.max()))
        out = out.clamp_(low, high)
    do_h = bool(torch.rand(()) < hflip)
    do_v = bool(torch.rand(()) < vflip)
    if do_h:
        out = out.flip(-1)
    if do_v:
        out = out.flip(-2)
    return out, CropParams(top=top, left=left, height=h, width=w, hflip=do_h, vflip=do_v, size=tuple(size))


class RGBPhotometric:
    """DINO/BYOL photometric augmentation for RGB images in [0, 1]: colour jitter (p=0.8), grayscale (p=0.2),
    Gaussian blur (p=``blur``), solarisation (p=``solarize``). Refuses images that are not 3-channel: jittering
    hue/saturation of CT, multispectral or single-stain images is meaningless."""

    def __init__(
        self,
        jitter: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        grayscale: float = 0.2,
        blur: float = 0.5,
        solarize: float = 0.0,
    ):
        ops: list[Any] = [
            v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=jitter),
            v2.RandomGrayscale(p=grayscale),
        ]
        if blur:
            ops.append(v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=blur))
        if solarize:
            ops.append(v2.RandomSolarize(0.5, p=solarize))
        self.ops = v2.Compose(ops)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"RGB photometric augmentation got a {image.shape[0]}-channel image; it only applies to RGB "
                "(set photometric: null for other modalities and use the domain's own augmentation)"
            )
        return self.ops(image)


class MultiCropView:
    """``n_global`` global and ``n_local`` local views (DINO multi-crop). Output keys: ``global_crops`` (list of
    ``C x G x G``), ``local_crops`` (list of ``C x L x L``), and ``crop_params`` (one :class:`CropParams` per view,
    global first) when ``return_params``. ``photometric`` (e.g. :class:`RGBPhotometric`) runs on every view before
    normalisation; ``masking`` adds ``masks`` ``(n_global, N)`` for the global views (iBOT).

    Asymmetric views (BYOL, DINO, DINOv2, MoCo v3): after ``photometric``, view ``i`` of the globals is blurred with
    probability ``global_blur[i]`` and solarised with ``global_solarize[i]``, the locals with ``local_blur`` /
    ``local_solarize`` (:class:`BlurSolarize`). DINOv2's intended values are ``global_blur=[1.0, 0.1]``,
    ``global_solarize=[0.0, 0.2]``, ``local_blur=0.5`` (DINO's paper and code, BYOL's Table 6). DINOv2's released
    ``data/augmentations.py`` passes ``p`` to a ``GaussianBlur(RandomApply)`` whose ``keep_p = 1 - p`` is the
    probability of *applying*, so its effective values are 0.0 / 0.9 / 0.5 (dinov2 PR #411): pass
    ``global_blur=[0.0, 0.9]`` to reproduce the released weights' augmentation. Crops are resized with
    ``interpolation`` (DINOv2: bicubic)."""

    def __init__(
        self,
        global_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        local_size: int = 96,
        n_global: int = 2,
        n_local: int = 8,
        global_scale: Sequence[float] = (0.32, 1.0),
        local_scale: Sequence[float] = (0.05, 0.32),
        hflip: float = 0.5,
        vflip: float = 0.0,
        photometric=None,
        masking=None,
        return_params: bool = False,
        global_blur: float | Sequence[float] | None = None,
        global_solarize: float | Sequence[float] | None = None,
        local_blur: float = 0.0,
        local_solarize: float = 0.0,
        blur_kernel: int = 9,
        interpolation: str = "bicubic",
    ):
        self.global_size, self.local_size = _pair(global_size), _pair(local_size)
        self.n_global, self.n_local = n_global, n_local
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.hflip, self.vflip = hflip, vflip
        self.photometric, self.masking, self.return_params = photometric, masking, return_params
        self.normalize = Normalize(mean, std)
        self.interpolation = interpolation
        _interpolation(interpolation)
        blurs = _per_view(global_blur, n_global, "global_blur")
        solarizes = _per_view(global_solarize, n_global, "global_solarize")
        self.global_extras = [BlurSolarize(b, s, blur_kernel) for b, s in zip(blurs, solarizes)]
        self.local_extra = BlurSolarize(local_blur, local_solarize, blur_kernel)

    def _view(self, image: torch.Tensor, size, scale, extra: BlurSolarize):
        out, params = random_crop(
            image, size, scale, hflip=self.hflip, vflip=self.vflip, interpolation=self.interpolation
        )
        out = to_float(out)
        if self.photometric is not None:
            out = self.photometric(out)
        return self.normalize(extra(out)), params

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        views = [self._view(image, self.global_size, self.global_scale, extra) for extra in self.global_extras]
        views += [self._view(image, self.local_size, self.local_scale, self.local_extra) for _ in range(self.n_local)]
        out = {k: v for k, v in sample.items() if k != "image"}
        out["global_crops"] = [v for v, _ in views[: self.n_global]]
        out["local_crops"] = [v for v, _ in views[self.n_global :]]
        if self.return_params:
            out["crop_params"] = [p for _, p in views]
        if self.masking is not None:
            out["masks"] = torch.stack([self.masking() for _ in range(self.n_global)])
        return out


class TwoViews:
    """Two independently augmented views ``view1``/``view2`` (SimCLR, MoCo v3, BYOL) with crop parameters.
    ``blur``/``solarize`` give each view its probabilities (MoCo v3 and BYOL: blur ``[1.0, 0.1]``, solarise
    ``[0.0, 0.2]``; SimCLR: blur 0.5 on both); see :class:`MultiCropView`."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: Sequence[float] = (0.08, 1.0),
        hflip: float = 0.5,
        vflip: float = 0.0,
        photometric=None,
        blur: float | Sequence[float] | None = None,
        solarize: float | Sequence[float] | None = None,
        blur_kernel: int = 9,
        interpolation: str = "bilinear",
    ):
        self.inner = MultiCropView(
            size,
            mean,
            std,
            n_global=2,
            n_local=0,
            global_scale=scale,
            hflip=hflip,
            vflip=vflip,
            photometric=photometric,
            return_params=True,
            global_blur=blur,
            global_solarize=solarize,
            blur_kernel=blur_kernel,
            interpolation=interpolation,
        )

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.inner(sample)
        out["view1"], out["view2"] = out.pop("global_crops")
        out.pop("local_crops")
        return out


class ImageTransform:
    """Apply an image transform to ``sample["image"]`` (``view=None``: the dataset's own, e.g. 3D patches);
    optionally add a patch mask from ``masking``."""

    def __init__(self, view=None, masking=None):
        self.view, self.masking = view, masking

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample = dict(sample)
        if self.view is not None:
            sample["image"] = self.view(sample["image"])
        if self.masking is not None:
            sample["mask"] = self.masking()
        return sample

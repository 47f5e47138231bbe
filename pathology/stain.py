"""Stain augmentation and normalisation as tensor transforms on ``3 x H x W`` (or ``B x 3 x H x W``) RGB, float in
[0, 1] or uint8 (converted; the output is float in [0, 1]); they draw from torch's global RNG, which the engine
seeds per sample.

- :class:`HEDJitter`: colour deconvolution into haematoxylin/eosin/DAB optical densities (Ruifrok & Johnston 2001,
  skimage's ``rgb2hed`` matrices), per-image ``od * a + b`` with ``a ~ U(1 - alpha, 1 + alpha)`` and
  ``b ~ U(-beta, beta)`` per stain (``b`` in natural-log optical density), back to RGB (Tellez et al. 2018).
- :class:`MacenkoNormalize`: Macenko et al. 2009 stain normalisation to a reference stain matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from domainfm.data.transforms import to_float
from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

_LOG_ADJUST = float(torch.log(torch.tensor(1e-6, dtype=torch.float64)))  # skimage's scaling of optical densities
_HED_FROM_RGB = torch.tensor(hed_from_rgb, dtype=torch.float32)
_RGB_FROM_HED = torch.tensor(rgb_from_hed, dtype=torch.float32)


def rgb_to_hed(image: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """skimage's ``rgb2hed`` on a channel-first tensor (``clamp=False`` keeps negative stain amounts, so that
    :func:`hed_to_rgb` inverts it exactly)."""
    od = torch.log(image.clamp_min(1e-6)) / _LOG_ADJUST
    hed = torch.einsum("...chw,cd->...dhw", od, _HED_FROM_RGB.to(image))
    return hed.clamp_min(0) if clamp else hed


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """skimage's ``hed2rgb`` on a channel-first tensor."""
    log_rgb = torch.einsum("...dhw,dc->...chw", hed * _LOG_ADJUST, _RGB_FROM_HED.to(hed))
    return torch.exp(log_rgb).clamp(0, 1)


class HEDJitter:
    """Random scaling and shift of the H, E and D stain densities. ``alpha``/``beta`` are the half-widths of the
    uniform factor and offset (0.05 and 0.05: Tellez et al.'s "HED-light"; their "HED-strong" is 0.2)."""

    def __init__(self, alpha: float | Sequence[float] = 0.05, beta: float | Sequence[float] = 0.05, p: float = 1.0):
        self.alpha = torch.as_tensor(alpha, dtype=torch.float32).expand(3).clone()
        self.beta = torch.as_tensor(beta, dtype=torch.float32).expand(3).clone()
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = to_float(image)  # uint8 tiles (as they stream) become [0, 1] floats
        batch = image.shape[:-3]
        if self.p < 1.0 and float(torch.rand(())) >= self.p:
            return image
        a = 1 + (2 * torch.rand(*batch, 3) - 1) * self.alpha
        b = (2 * torch.rand(*batch, 3) - 1) * self.beta
        hed = rgb_to_hed(image.float(), clamp=False)
        hed = hed * a[..., None, None].to(hed) + b[..., None, None].to(hed) / -_LOG_ADJUST  # b in OD units
        return hed_to_rgb(hed).to(image.dtype)

    def __repr__(self) -> str:
        return f"HEDJitter(alpha={self.alpha.tolist()}, beta={self.beta.tolist()}, p={self.p})"


# Reference stain matrix (columns: haematoxylin, eosin) and 99th-percentile concentrations of Macenko's reference
# slide, as used by the common implementations (HEnorm_python, torchstain).
MACENKO_HE_REF = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
MACENKO_MAX_C_REF = (1.9705, 1.0308)


class MacenkoNormalize:
    """Map an H&E tile's stains onto a reference (Macenko et al. 2009): optical densities, the plane of the two
    largest principal directions of the tissue pixels, stain vectors at the ``alpha`` and ``100 - alpha`` angle
    percentiles, concentrations by least squares scaled to the reference's 99th percentiles.

    Defaults: ``io=240`` (transmitted light), ``alpha=1``, ``beta=0.15`` (OD threshold for tissue pixels), the
    reference of :data:`MACENKO_HE_REF`. :meth:`fit` takes the reference from a tile instead. A tile with fewer
    than ``min_pixels`` tissue pixels is returned unchanged.
    """

    def __init__(
        self,
        stain_matrix: Sequence[Sequence[float]] = MACENKO_HE_REF,
        max_concentrations: Sequence[float] = MACENKO_MAX_C_REF,
        io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        min_pixels: int = 64,
    ):
        self.stain_matrix = torch.as_tensor(stain_matrix, dtype=torch.float32)
        self.max_concentrations = torch.as_tensor(max_concentrations, dtype=torch.float32)
        self.io, self.alpha, self.beta, self.min_pixels = io, alpha, beta, min_pixels

    @classmethod
    def fit(cls, reference: torch.Tensor, **kwargs) -> MacenkoNormalize:
        """A normaliser whose target stains are those of ``reference`` (``3 x H x W`` in [0, 1])."""
        norm = cls(**kwargs)
        found = norm.estimate(reference)
        if found is None:
            raise ValueError("the reference tile has too little tissue to estimate its stains")
        norm.stain_matrix, norm.max_concentrations = found
        return norm

    def _od(self, image: torch.Tensor) -> torch.Tensor:
        return -torch.log((image.reshape(3, -1).T.double() * 255 + 1) / self.io)  # N x 3

    def estimate(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(stain matrix 3 x 2 (H, E columns), 99th-percentile concentrations (2,))``, or None without tissue."""
        od = self._od(to_float(image))
        tissue = od[~(od < self.beta).any(dim=1)]
        if len(tissue) < self.min_pixels:
            return None
        _, vectors = torch.linalg.eigh(torch.cov(tissue.T))
        plane = vectors[:, 1:3]
        if plane[:, 1].sum() < 0:  # the main direction points to positive densities; the angles stay in (0, pi)
            plane = plane * torch.tensor([1.0, -1.0], dtype=plane.dtype)
        projected = tissue @ plane
        phi = torch.atan2(projected[:, 1], projected[:, 0])
        lo, hi = torch.quantile(phi, torch.tensor([self.alpha / 100, 1 - self.alpha / 100], dtype=phi.dtype))
        v_lo = plane @ torch.stack([torch.cos(lo), torch.sin(lo)])
        v_hi = plane @ torch.stack([torch.cos(hi), torch.sin(hi)])
        he = torch.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], dim=1)  # haematoxylin first
        conc = torch.linalg.lstsq(he, od.T).solution
        max_c = torch.quantile(conc, 0.99, dim=1)
        return he.float(), max_c.float()

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = to_float(image)  # uint8 tiles (as they stream) become [0, 1] floats
        if image.ndim == 4:
            return torch.stack([self(x) for x in image])
        found = self.estimate(image)
        if found is None:
            return image
        he, max_c = found
        od = self._od(image)
        conc = torch.linalg.lstsq(he.double(), od.T).solution
        conc *= (self.max_concentrations.double() / max_c.double().clamp_min(1e-6))[:, None]
        out = self.io * torch.exp(-self.stain_matrix.double() @ conc)
        return (out.clamp(0, 255) / 255).reshape(image.shape).to(image.dtype)

    def __repr__(self) -> str:
        return f"MacenkoNormalize(io={self.io}, alpha={self.alpha}, beta={self.beta})"

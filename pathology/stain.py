"""Stain augmentation and normalisation as tensor transforms on ``3 x H x W`` (or ``B x 3 x H x W``) RGB, float in
[0, 1] or uint8 (converted; the output is float in [0, 1]); they draw from torch's global RNG, which the engine
seeds per sample.

- :class:`HEDJitter`: Tellez et al.'s HED colour augmentation (Tellez et al. 2018, SPIE Medical Imaging; the
  "HED-light"/"HED-strong" ranges of Tellez et al. 2019, Medical Image Analysis 58): colour deconvolution with
  scikit-image's ``rgb2hed`` (Ruifrok & Johnston 2001 matrices), per image and stain ``hed * a + b`` with
  ``a ~ U(1 - alpha, 1 + alpha)`` and ``b ~ U(-beta, beta)``, back with ``hed2rgb``. ``b`` is in ``rgb2hed``'s own
  units (optical density divided by ln 1e6, see :func:`rgb_to_hed`), as DIAG's reference ``HedColorAugmenter``
  adds it.
- :class:`MacenkoNormalize`: Macenko et al. 2009 stain normalisation to a reference stain matrix (HEnorm_python's
  algorithm and defaults; cross-checked against torchstain in the tests).
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
    """skimage's ``rgb2hed`` on a channel-first tensor: ``hed = (ln(max(rgb, 1e-6)) / ln(1e-6)) @ hed_from_rgb``,
    i.e. the optical densities ``-ln(rgb)`` divided by ln(1e6) = 13.8 (so ``rgb = 1e-6`` is 1 and one unit is 6 decadic
    OD units), then unmixed into haematoxylin, eosin and DAB amounts. skimage clamps negative amounts to 0;
    ``clamp=False`` keeps them, so that :func:`hed_to_rgb` inverts it exactly."""
    od = torch.log(image.clamp_min(1e-6)) / _LOG_ADJUST
    hed = torch.einsum("...chw,cd->...dhw", od, _HED_FROM_RGB.to(image))
    return hed.clamp_min(0) if clamp else hed


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """skimage's ``hed2rgb`` on a channel-first tensor: ``rgb = clip(exp(-(hed * ln 1e6) @ rgb_from_hed), 0, 1)``."""
    log_rgb = torch.einsum("...dhw,dc->...chw", hed * _LOG_ADJUST, _RGB_FROM_HED.to(hed))
    return torch.exp(log_rgb).clamp(0, 1)


class HEDJitter:
    """Random scaling and shift of the haematoxylin, eosin and DAB amounts (Tellez et al. 2018):

    ``out = hed2rgb(rgb2hed(x) * a + b)``, ``a_s ~ U(1 - alpha_s, 1 + alpha_s)``, ``b_s ~ U(-beta_s, beta_s)``,

    one draw per image and stain ``s``, with scikit-image's ``rgb2hed``/``hed2rgb`` (:func:`rgb_to_hed`,
    :func:`hed_to_rgb`). This is DIAG's ``HedColorAugmenter`` (pathology-data-augmentation / digitalpathology:
    ``rgb2hed``, ``hed[..., s] *= 1 + sigma_s``, ``hed[..., s] += bias_s``, ``hed2rgb``, clip), so ``b`` is in
    ``rgb2hed`` units: an offset of 0.05 is 0.05 * ln(1e6) = 0.69 natural-log optical density. Measured on the
    Kather tiles, +0.05 on all three stains changes a tumour tile by 0.155 per channel on average (0.15 to 0.58
    across the eight classes, the most on light tissue and background). This module used to divide ``b`` by
    ln(1e6) (natural-log OD units), which made the same ``beta`` 13.8x weaker: 0.017 on that tile.

    Defaults ``alpha = beta = 0.05``: Tellez et al. 2019's "HED-light" (their "HED-strong" is 0.2). Scalars or one
    value per stain (H, E, D); ``p`` is the probability of jittering an image at all.

    ``clamp=True`` (default, as the reference): negative stain amounts are set to 0 before the jitter, as skimage's
    ``rgb2hed`` does; this alone changes some pixels (reddish or very light ones, where the unmixing gives a
    negative haematoxylin amount), even at ``alpha = beta = 0``. ``clamp=False`` keeps them, so that zero jitter is
    the identity. Deviations from the reference: no ``cutoff_range`` (it skips tiles whose mean is outside an
    interval) and the output stays float (the reference truncates uint8 input back to uint8). Older scikit-image
    releases computed ``rgb2hed`` as ``-ln(rgb + 2)`` unmixed, without the scaling or the clamp (the version DIAG's
    pathology-he-auto-augment vendors); the same ``beta`` is a different strength there.
    """

    def __init__(
        self,
        alpha: float | Sequence[float] = 0.05,
        beta: float | Sequence[float] = 0.05,
        p: float = 1.0,
        clamp: bool = True,
    ):
        self.alpha = torch.as_tensor(alpha, dtype=torch.float32).expand(3).clone()
        self.beta = torch.as_tensor(beta, dtype=torch.float32).expand(3).clone()
        self.p, self.clamp = p, clamp

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = to_float(image)  # uint8 tiles (as they stream) become [0, 1] floats
        batch = image.shape[:-3]
        if self.p < 1.0 and float(torch.rand(())) >= self.p:
            return image
        a = 1 + (2 * torch.rand(*batch, 3) - 1) * self.alpha
        b = (2 * torch.rand(*batch, 3) - 1) * self.beta
        return self.apply(image, a, b)

    def apply(self, image: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The jitter with given factors ``a`` and offsets ``b`` (``(..., 3)``: one (H, E, D) triple per image of
        the batch, or one for all): ``hed2rgb(rgb2hed(image) * a + b)``, ``b`` in ``rgb2hed`` units."""
        image = to_float(image)
        hed = rgb_to_hed(image.float(), clamp=self.clamp)
        a, b = torch.as_tensor(a).to(hed), torch.as_tensor(b).to(hed)
        return hed_to_rgb(hed * a[..., None, None] + b[..., None, None]).to(image.dtype)

    def __repr__(self) -> str:
        return f"HEDJitter(alpha={self.alpha.tolist()}, beta={self.beta.tolist()}, p={self.p}, clamp={self.clamp})"


# Reference stain matrix (columns: haematoxylin, eosin) and 99th-percentile concentrations of Macenko's reference
# slide, as used by the common implementations (HEnorm_python, torchstain).
MACENKO_HE_REF = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
MACENKO_MAX_C_REF = (1.9705, 1.0308)


class MacenkoNormalize:
    """Map an H&E tile's stains onto a reference (Macenko et al. 2009, "A method for normalizing histology slides
    for quantitative analysis", ISBI), the algorithm of HEnorm_python (which torchstain ports):

    1. optical densities ``od = -ln((255 x + 1) / io)``; tissue pixels have all three ``od >= beta``;
    2. the plane of the two largest eigenvectors of the tissue pixels' ``od`` covariance; each pixel's angle
       ``phi`` in it; the stain vectors are the plane's directions at the ``alpha``-th and ``(100 - alpha)``-th
       percentiles of ``phi`` (linear interpolation, NumPy's default), haematoxylin first (the vector with the
       larger red density);
    3. concentrations ``C`` by least squares over all pixels, scaled per stain by ``max_C_ref / max_C`` (99th
       percentiles);
    4. ``out = io * exp(-stain_matrix_ref @ C)``, clipped to [0, 255], returned as float in [0, 1].

    Defaults (HEnorm_python's): ``io=240`` (transmitted light), ``alpha=1``, ``beta=0.15``, the reference of
    :data:`MACENKO_HE_REF` / :data:`MACENKO_MAX_C_REF`. :meth:`fit` takes the reference from a tile instead. A
    tile with fewer than ``min_pixels`` tissue pixels is returned unchanged. The eigenvectors' signs are arbitrary;
    the main one is turned towards positive densities so the angles never wrap around +-pi (which gives the same
    pair of stain vectors as HEnorm_python whenever its angles do not wrap either).

    Against torchstain 1.4.1 (``MacenkoNormalizer(backend="torch")``, tests/pathology/test_stain.py): the same
    stain vectors (same signs and order) and 99th percentiles to ~1e-3, normalised images within one grey level.
    The differences are torchstain's: nearest-rank percentiles (``kthvalue``) instead of interpolated ones,
    float32 instead of float64, and an output truncated to integers. HEnorm_python clips values over 255 to 254;
    this clips them to 255.
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

"""CRFR-P masking (FSFM, Wang et al. CVPR 2025: "Covering a Random Facial Region, Proportionally"), vectorised
over the batch.

Regions, over LaPa parsing maps, in FSFM's order (``fsfm-3c/util/datasets.py``, ``collate_fn_crfrp``): brows
{2, 3}, eyes {4, 5}, nose {6}, mouth {7, 8, 9}, face boundary (patches holding a skin pixel and a hair or
background pixel), hair {10}, skin {1}, background {0}. A patch belongs to a region if any of its pixels does
(the official code max-pools each class map over the patches; here an any()
over each patch's class ids gives the same membership). With ``N`` patches and ``M = floor(ratio * N)``:

1. pick one of the first six regions uniformly and mask all its patches ``R``;
2. if ``|R| < M``: ``r' = (M - |R|) / (N - |R|)``; walk the other regions in order and mask ``round(n_g * r')``
   random patches of the ``n_g`` patches of region ``g`` that neither ``R`` nor an earlier region holds; then
   mask (or unmask, never inside ``R``) random patches until exactly ``M`` are masked;
3. else keep a random ``M`` of ``R`` (and ``R`` becomes that subset).

The SFR target is ``R`` (step 3: the kept subset). Returned masks are bool ``(B, N)``, True = masked.

Deviation: FSFM draws the region once per collated batch (every face of a batch loses the same region type); here
each face draws its own, as the paper describes. :func:`crfrp_reference` transcribes FSFM's per-sample loop (with
the same per-face draw) for tests and the throughput benchmark.
"""

from __future__ import annotations

import math

import numpy as np
import torch

REGIONS = ("brows", "eyes", "nose", "mouth", "boundary", "hair", "skin", "background")
_CLASSES = {"brows": (2, 3), "eyes": (4, 5), "nose": (6,), "mouth": (7, 8, 9), "hair": (10,), "skin": (1,),
            "background": (0,)}  # fmt: skip
CHOOSABLE = 6  # R is one of the first six regions


def region_patches(parsing: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, 8, N)`` bool: which patches hold each region (:data:`REGIONS` order) of LaPa maps ``(B, H, W)``."""
    B, H, W = parsing.shape
    p = patch_size
    h, w = H // p, W // p
    cells = parsing[:, : h * p, : w * p]
    present = _present_bits(cells, p) if cells.device.type == "cpu" else _present_any(cells, p)

    def union(ids):
        return present[:, list(ids)].any(1)

    rows = []
    for name in REGIONS:
        if name == "boundary":
            rows.append(union((10, 0)) & union((1,)))
        else:
            rows.append(union(_CLASSES[name]))
    return torch.stack(rows, 1)


def _present_any(cells: torch.Tensor, p: int) -> torch.Tensor:
    """:func:`_present_bits` by a comparison and a max-reduction per class (any device)."""
    B, H, W = cells.shape
    h, w = H // p, W // p
    return torch.stack([(cells == k).view(B, h, p, w, p).any(4).any(2).flatten(1) for k in range(11)], 1)


def _present_bits(cells: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, 11, h * w)`` bool: which LaPa classes each ``p`` x ``p`` patch holds. One bit per class, OR-reduced
    over the patch's rows then columns (23 vs 261 ms for 256 maps of 224 px on one CPU thread, against 11
    comparisons + max); other values land on an unused bit."""
    B, H, W = cells.shape
    h, w = H // p, W // p
    if cells.dtype != torch.uint8:  # maps read from PNGs are 0..255: one cheap cast, else mark outsiders first
        lo, hi = torch.aminmax(cells)
        if lo < 0 or hi > 255:
            cells = torch.where((cells >= 0) & (cells <= 10), cells, 15)
        cells = cells.to(torch.uint8)
    classes = np.minimum(cells.numpy(), 15).astype(np.uint16)
    bits = np.left_shift(np.uint16(1), classes, dtype=np.uint16)
    rows = np.bitwise_or.reduce(bits.reshape(B * h, p, w, p), axis=1)
    acc = np.bitwise_or.reduce(rows.reshape(B * h * w, p), axis=1).reshape(B, h * w)
    return torch.from_numpy(((acc[:, None, :] >> np.arange(11, dtype=np.uint16)[None, :, None]) & 1).astype(bool))


def _pick(candidates: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random ``k[b]`` of the True entries of each row of ``candidates`` (B, N)."""
    scores = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    scores = scores.masked_fill(~candidates, 2.0)
    rank = scores.argsort(1).argsort(1)
    return (rank < k[:, None]) & candidates


def crfrp_masks(
    regions: torch.Tensor,
    ratio: float = 0.75,
    generator: torch.Generator | None = None,
    choice: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CRFR-P over a batch of :func:`region_patches` ``(B, 8, N)`` -> ``(mask, sfr, choice)``: the image mask and
    the SFR mask, bool ``(B, N)``, and each face's region index ``(B,)`` (drawn unless given)."""
    B, G, N = regions.shape
    M = math.floor(ratio * N)
    dev = regions.device
    if choice is None:
        choice = torch.randint(0, CHOOSABLE, (B,), generator=generator, device="cpu")
    choice = choice.to(dev)
    R = regions[torch.arange(B, device=dev), choice]
    nR = R.sum(1)
    normal = nR < M
    rprime = (M - nR).clamp_min(0).double() / (N - nR).clamp_min(1).double()
    mask, covered = R.clone(), R.clone()
    for g in range(G):
        cand = regions[:, g] & ~covered & (choice != g)[:, None]
        k = torch.round(cand.sum(1).double() * rprime).long()
        mask |= _pick(cand, k, generator) & normal[:, None]
        covered |= cand
    count = mask.sum(1)
    mask |= _pick(~mask, (M - count).clamp_min(0), generator)
    mask &= ~_pick(mask & ~R, (count - M).clamp_min(0), generator)
    kept = R & ~_pick(R, (nR - M).clamp_min(0), generator)
    mask = torch.where(normal[:, None], mask, kept)
    sfr = torch.where(normal[:, None], R, kept)
    return mask, sfr, choice


def crfrp_reference(regions: np.ndarray, choice: int, ratio: float, rng: np.random.Generator):
    """FSFM's per-face loop on one face's ``(8, N)`` region membership with region ``choice``: ``(mask, sfr)``."""
    G, N = regions.shape
    M = math.floor(ratio * N)
    R = regions[choice].copy()
    num = M - int(R.sum())
    mask = R.copy()
    if num >= 1:
        rprime = num / (N - R.sum())
        covered = R.copy()
        for g in range(G):
            if g == choice:
                continue
            cand = regions[g] & ~covered
            idx = np.flatnonzero(cand)
            take = rng.permutation(len(idx))[: int(np.round(cand.sum() * rprime))]
            mask[idx[take]] = True
            covered |= cand
        num = M - int(mask.sum())
        pool = np.flatnonzero(~mask) if num > 0 else np.flatnonzero(mask & ~R)
        mask[pool[rng.permutation(len(pool))[: abs(num)]]] = num > 0
        return mask, R
    pool = np.flatnonzero(R)
    mask[pool[rng.permutation(len(pool))[:-num]]] = False
    return mask, mask.copy()

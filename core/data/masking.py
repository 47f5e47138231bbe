"""Patch-mask generators, applied per sample in the data pipeline (so masks are reproducible per sample
and identical whatever the number of processes). ``True`` = masked.
"""

from __future__ import annotations

import math

import torch


class RandomPatchMask:
    """MAE random masking: rank i.i.d. uniform noise and keep the ``int(N * (1 - ratio))`` lowest (He et al. 2022,
    ``random_masking``). With ``unit > 1`` the draw is over ``unit x unit`` groups of patches (SimMIM's mask patches,
    32 px over 16 px tokens = ``unit=2``), each group masked or kept whole."""

    def __init__(self, grid: tuple[int, ...] | list[int] | int, ratio: float = 0.75, unit: int = 1):
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
        if unit > 1 and len(self.grid) != 2:
            raise ValueError("mask units (unit > 1) are defined for 2D patch grids only")
        if self.grid[0] % unit or self.grid[1] % unit:
            raise ValueError(f"patch grid {self.grid} is not divisible by the mask unit {unit}")
        self.ratio, self.unit = ratio, unit

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)

    def __call__(self) -> torch.Tensor:
        n = math.prod(self.grid) // self.unit**2
        keep = int(n * (1 - self.ratio))
        ids = torch.argsort(torch.rand(n))
        mask = torch.ones(n, dtype=torch.bool)
        mask[ids[:keep]] = False
        if self.unit > 1:
            gh, gw = self.grid[0] // self.unit, self.grid[1] // self.unit
            mask = mask.reshape(gh, gw).repeat_interleave(self.unit, 0).repeat_interleave(self.unit, 1)
        return mask.flatten()


class BlockPatchMask:
    """BEiT block-wise masking (Bao et al. 2022, ``MaskingGenerator``; used by iBOT/DINOv2): repeatedly add a random
    rectangle of area ``U(min_block, min(left, max_block))`` patches and aspect ratio ``exp(U(log a, -log a))``,
    counting only newly masked patches, until ``round(ratio * N)`` patches are masked or no rectangle fits in 10
    tries (then the mask may hold fewer patches, as in the reference). DINOv2: ``min_block=4``, ``max_block=N/2``,
    ``min_aspect=0.3``."""

    def __init__(
        self,
        grid,
        ratio: float = 0.4,
        min_block: int = 4,
        max_block: float | None = 0.5,
        min_aspect: float = 0.3,
        max_tries: int = 10,
    ):
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self.ratio, self.min_block, self.min_aspect, self.max_tries = ratio, min_block, min_aspect, max_tries
        n = self.grid[0] * self.grid[1]
        self.max_block = n if max_block is None else (int(max_block * n) if max_block <= 1 else int(max_block))

    def _add_block(self, mask: torch.Tensor, budget: int) -> int:
        h, w = self.grid
        log_aspect = (math.log(self.min_aspect), -math.log(self.min_aspect))
        for _ in range(self.max_tries):
            area = float(torch.empty(()).uniform_(self.min_block, max(self.min_block, budget)))
            aspect = math.exp(float(torch.empty(()).uniform_(*log_aspect)))
            bh = int(round(math.sqrt(area * aspect)))
            bw = int(round(math.sqrt(area / aspect)))
            if bw < w and bh < h:
                top = int(torch.randint(0, h - bh + 1, ()))
                left = int(torch.randint(0, w - bw + 1, ()))
                region = mask[top : top + bh, left : left + bw]
                new = int((~region).sum())
                if 0 < new <= budget:
                    region[:] = True
                    return new
        return 0

    def __call__(self, ratio: float | None = None) -> torch.Tensor:
        h, w = self.grid
        target = int(round(h * w * (self.ratio if ratio is None else ratio)))
        mask = torch.zeros(h, w, dtype=torch.bool)
        count = 0
        while count < target:
            added = self._add_block(mask, min(target - count, self.max_block))
            if added == 0:
                break
            count += added
        return mask.flatten()


class IBOTMask:
    """DINOv2's per-crop masking: with probability ``prob`` a block mask of ratio ``U(ratio_min, ratio_max)``,
    otherwise nothing. (DINOv2 stratifies the ratios over the masked part of each batch; drawing per sample keeps
    masks independent of batch composition and process count, with the same distribution.)"""

    def __init__(self, grid, prob: float = 0.5, ratio: tuple[float, float] | list[float] = (0.1, 0.5)):
        self.block = BlockPatchMask(grid, min_block=4, max_block=0.5, min_aspect=0.3)
        self.prob, self.ratio = prob, tuple(ratio)

    def __call__(self) -> torch.Tensor:
        if float(torch.rand(())) >= self.prob:
            return torch.zeros(self.block.grid[0] * self.block.grid[1], dtype=torch.bool)
        return self.block(float(torch.empty(()).uniform_(*self.ratio)))

"""Patch-mask generators, applied per sample in the data pipeline (so masks are reproducible per sample
and identical whatever the number of processes). ``True`` = masked.
"""

from __future__ import annotations

import math

import torch


class RandomPatchMask:
    """MAE random masking: rank i.i.d. uniform noise, mask the ``round(N * ratio)`` highest-noise patches
    (He et al. 2022, ``random_masking``: argsort of noise, keep ``int(N * (1 - ratio))``)."""

    def __init__(self, grid: tuple[int, int] | list[int] | int, ratio: float = 0.75):
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
        self.ratio = ratio

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)

    def __call__(self) -> torch.Tensor:
        n = self.num_patches
        keep = int(n * (1 - self.ratio))
        ids = torch.argsort(torch.rand(n))
        mask = torch.ones(n, dtype=torch.bool)
        mask[ids[:keep]] = False
        return mask


class BlockPatchMask:
    """BEiT/SimMIM-style block-wise masking: add random rectangles (aspect ratio in
    ``[min_aspect, 1/min_aspect]``, area >= ``min_block`` patches) until ``ratio`` of the grid is masked."""

    def __init__(self, grid, ratio: float = 0.4, min_block: int = 4, min_aspect: float = 0.3, max_tries: int = 10):
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self.ratio, self.min_block, self.min_aspect, self.max_tries = ratio, min_block, min_aspect, max_tries

    def __call__(self) -> torch.Tensor:
        h, w = self.grid
        target = int(round(h * w * self.ratio))
        mask = torch.zeros(h, w, dtype=torch.bool)
        log_aspect = (math.log(self.min_aspect), -math.log(self.min_aspect))
        while int(mask.sum()) < target:
            added = False
            for _ in range(self.max_tries):
                left = target - int(mask.sum())
                area = float(torch.empty(1).uniform_(self.min_block, max(self.min_block, left)))
                aspect = math.exp(float(torch.empty(1).uniform_(*log_aspect)))
                bh = int(round(math.sqrt(area * aspect)))
                bw = int(round(math.sqrt(area / aspect)))
                if 0 < bh <= h and 0 < bw <= w:
                    top = int(torch.randint(0, h - bh + 1, (1,)))
                    lft = int(torch.randint(0, w - bw + 1, (1,)))
                    region = mask[top : top + bh, lft : lft + bw]
                    new = int((~region).sum())
                    if 0 < new <= left:
                        region[:] = True
                        added = True
                        break
            if not added:  # fill the remainder patch by patch
                free = torch.nonzero(~mask.flatten()).squeeze(1)
                pick = free[torch.randperm(len(free))[: target - int(mask.sum())]]
                mask.view(-1)[pick] = True
        return mask.flatten()

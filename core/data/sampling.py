"""Resumable, rank-sharded sample stream with per-sample seeds.

The global stream is the concatenation of per-epoch permutations of the dataset (``randperm`` seeded by
``(seed, epoch)``). Global batch ``b`` is ``stream[b*G:(b+1)*G]`` with ``G = batch_size * world_size``;
rank ``r`` takes the ``r``-th slice of ``batch_size`` samples. Every stream element carries its own seed, so
augmentations and masks are the same whether the run uses 1 or N processes, 0 or N loader workers, and
whether it was resumed. The position is a single integer: samples consumed globally.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from domainfm.errors import DataError
from torch.utils.data import Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, position: int) -> int:
    """A 63-bit seed for stream position ``position`` (splitmix64 finaliser)."""
    z = (seed * 0x100000001B3 + position * _MIX + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class StreamSampler(Sampler):
    """Yields ``(index, seed)`` pairs for one rank, forever, starting at global position ``start``.

    With ``weights`` (one per sample, e.g. inverse class frequency) each epoch is ``size`` draws with replacement
    proportional to the weights instead of a permutation. With ``groups=(group_ids, window)`` each epoch is a
    patch queue's order (:meth:`_queued`).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        shuffle: bool = True,
        weights: torch.Tensor | None = None,
        groups: tuple[torch.Tensor, int] | None = None,
    ):
        if size <= 0:
            raise DataError("the dataset is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start, self.shuffle = rank, world_size, start, shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if self.weights is not None and (len(self.weights) != size or bool((self.weights < 0).any())):
            raise ValueError(f"weights must be {size} non-negative numbers")
        self.members, self.window = None, 0
        if groups is not None:
            if self.weights is not None:
                raise ValueError("weighted sampling and grouped (queued) sampling cannot be combined")
            ids, self.window = torch.as_tensor(groups[0]), int(groups[1])
            if len(ids) != size or self.window < 1:
                raise ValueError(f"groups must give one group id per sample ({size}) and a window >= 1")
            self.members = [torch.nonzero(ids == g).flatten() for g in torch.unique(ids)]

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator().manual_seed(sample_seed(self.seed, -1 - epoch))
        if self.members is not None:
            return self._queued(g)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.size, replacement=True, generator=g)
        return torch.randperm(self.size, generator=g)

    def _queued(self, g: torch.Generator) -> torch.Tensor:
        """A patch queue's order (torchio's ``Queue``): groups (volumes) in random order, ``window`` at a time,
        the samples of each window shuffled together, so a group's samples come close together in the stream and
        a reader that caches ``window`` groups decodes each about once per epoch."""
        groups = torch.randperm(len(self.members), generator=g)
        parts = []
        for start in range(0, len(groups), self.window):
            window = torch.cat([self.members[i] for i in groups[start : start + self.window].tolist()])
            parts.append(window[torch.randperm(len(window), generator=g)])
        return torch.cat(parts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        global_batch = self.batch_size * self.world_size
        if self.start % global_batch:
            raise ValueError(f"start position {self.start} is not a multiple of the global batch {global_batch}")
        pos = self.start
        epoch, order = -1, None
        while True:
            for k in range(self.batch_size):
                p = pos + self.rank * self.batch_size + k
                e = p // self.size
                if e != epoch:
                    epoch, order = e, self._order(e)
                yield int(order[p % self.size]), sample_seed(self.seed, p)
            pos += global_batch

    def __len__(self) -> int:  # infinite stream; DataLoader only needs this for len(loader)
        return 2**62


class SeededDataset(Dataset):
    """Runs ``transform(dataset[index])`` with torch's and Python's RNGs forked and seeded by the sample's seed
    (NumPy's global RNG is seeded too, and left so). Transforms draw from these global RNGs.

    Unreadable samples are skipped (the next index is used) and reported in ``sample["skipped"]``;
    with ``strict=True`` the first one raises a ``DataError`` naming the file.
    """

    def __init__(self, dataset: Dataset, transform=None, strict: bool = False, max_skips: int = 50):
        self.dataset, self.transform, self.strict, self.max_skips = dataset, transform, strict, max_skips

    def __len__(self) -> int:
        return len(self.dataset)

    def _name(self, index: int) -> str:
        describe = getattr(self.dataset, "describe", None)
        return describe(index) if describe else f"sample {index}"

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        skipped: list[str] = []
        for attempt in range(min(self.max_skips + 1, len(self.dataset))):
            i = (index + attempt) % len(self.dataset)
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(seed)  # CPU only: no CUDA lazy-init bookkeeping
                    py_state = random.getstate()
                    random.seed(seed)
                    np.random.seed(seed % 2**32)  # re-seeded, not restored: get/set_state costs ~0.1 ms
                    try:
                        sample = self.dataset[i]
                        if self.transform is not None:
                            sample = self.transform(sample)
                    finally:
                        random.setstate(py_state)
            except (OSError, ValueError, SyntaxError, RuntimeError, DataError) as err:
                if self.strict:
                    raise DataError(f"{self._name(i)}: unreadable ({err}); remove it or set data.strict=false") from err
                skipped.append(f"{self._name(i)}: {type(err).__name__}: {err}".splitlines()[0])
                continue
            sample["skipped"] = skipped
            return sample
        everything = len(skipped) == len(self.dataset)
        where = "every sample is unreadable" if everything else f"{len(skipped)} unreadable samples in a row"
        raise DataError(f"{where} ({_by_reason(skipped)}; first: {'; '.join(skipped[:3])}): check the data")


def _by_reason(skipped: list[str]) -> str:
    """``"3 DataError, 1 OSError"``: how many of the skipped samples failed with each kind of error."""
    from collections import Counter

    kinds = Counter(s.split(": ", 2)[1] if s.count(": ") >= 2 else "error" for s in skipped)
    return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())

"""Batching of sample dicts: tensors are stacked, ``meta`` stays a list, ``skipped`` is concatenated."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info
from torch.utils.data._utils.collate import collate, default_collate_fn_map

Alloc = Callable[[tuple[int, ...], torch.dtype], torch.Tensor | None]
"""Gives a contiguous tensor of that shape and dtype for a batch to be stacked into, or None (fresh memory)."""


def collate_samples(samples: list[dict[str, Any]], shared: bool | None = None, alloc: Alloc | None = None) -> dict:
    """Everything but ``meta``/``skipped`` goes through torch's ``default_collate``, which, inside a loader worker,
    stacks tensors straight into shared memory (no extra copy on the way to the main process). ``shared=False``
    stacks into ordinary memory even there; ``alloc`` gives the memory each stacked tensor is written into (for
    :class:`~domainfm.data.shared_batches.SharedBatches`: a worker's reused slab)."""
    shared = get_worker_info() is not None if shared is None else shared
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "meta":
            batch[key] = values
        elif key == "skipped":
            batch[key] = [x for v in values for x in v]
        elif _channels_last_views(values):
            batch[key] = stack_images(values, shared, alloc)
        else:
            batch[key] = _collate(values, shared, alloc)
    return batch


def _stack(values: list[torch.Tensor], *, collate_fn_map=None, alloc: Alloc | None = None) -> torch.Tensor:
    first = values[0]
    same = all(v.shape == first.shape and v.dtype == first.dtype for v in values)
    out = alloc((len(values), *first.shape), first.dtype) if alloc is not None and same else None
    return torch.stack(values, out=out)


_PRIVATE = {**default_collate_fn_map, torch.Tensor: _stack}


def _collate(values: list, shared: bool, alloc: Alloc | None = None) -> Any:
    if alloc is not None:
        return collate(values, collate_fn_map={**default_collate_fn_map, torch.Tensor: partial(_stack, alloc=alloc)})
    return default_collate(values) if shared else collate(values, collate_fn_map=_PRIVATE)


def _channels_last_views(values: list) -> bool:
    """Whether ``values`` are same-shaped ``C x H x W`` tensors that are views of ``H x W x C`` arrays."""
    first = values[0]
    if not isinstance(first, torch.Tensor) or first.ndim != 3 or first.is_contiguous():
        return False
    c, h, w = first.shape
    return all(
        isinstance(v, torch.Tensor)
        and v.shape == first.shape
        and v.dtype == first.dtype
        and v.stride() == (1, w * c, c)
        for v in values
    )


def stack_images(images: list[torch.Tensor], shared: bool | None = None, alloc: Alloc | None = None) -> torch.Tensor:
    """``B x C x H x W`` from ``C x H x W`` views of ``H x W x C`` tiles, stacked as they lie in memory: the batch is
    channels-last (what convolutions and ``.to(device)`` take as is), with one copy per tile and no transpose.
    Inside a loader worker (or with ``shared=True``) the batch is written straight into shared memory, as
    ``default_collate`` does; ``alloc`` gives the memory instead."""
    hwc = [image.permute(1, 2, 0) for image in images]
    out = alloc((len(hwc), *hwc[0].shape), hwc[0].dtype) if alloc is not None else None
    if out is None and (get_worker_info() is not None if shared is None else shared):
        first = hwc[0]
        storage = first.untyped_storage()._new_shared(len(hwc) * first.numel() * first.element_size())
        out = first.new(storage).resize_(len(hwc), *first.shape)
    return torch.stack(hwc, 0, out=out).permute(0, 3, 1, 2)

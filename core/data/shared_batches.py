"""Hand batches from loader workers to the main process through shared memory that each worker reuses.

A ``DataLoader`` worker puts every batch into fresh shared memory, which the kernel allocates page by page: on a
virtual machine about 5 us per 4 KiB page (the CI machine: 250 us for a 256 px uint8 tile, 1 ms for a float one,
while reading the tile from a slide takes 2-3 ms). :class:`SharedBatches` keeps a few shared slabs per worker and
stacks each batch straight into a free one (no private copy first); the main process copies it out with
:func:`take` (or the loader's pin-memory thread does, straight into pinned memory) and marks the slab free again.
A slab is reused only once it is marked free, so no batch is ever overwritten whatever the consumer does, and a
consumer that forgets :func:`take` gets a :class:`SlabBatch`, not silently shared data. When all of a worker's
slabs are held, the batch goes the default way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from domainfm.data.collate import collate_samples
from torch.utils.data import get_worker_info

HEADER = 64  # bytes before a slab's data; byte 0 is 1 while the main process still needs the slab
ALIGN = 64


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it (dicts, lists and tuples are rebuilt)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if its elements fill ``numel`` consecutive slots (contiguous or channels-last), else a copy."""
    if t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


class SlabBatch:
    """A batch whose tensors are views of a worker's slab. :meth:`take` returns it in the main process's own
    memory and frees the slab; the loader's pin-memory thread calls :meth:`pin_memory`, which does the same into
    pinned memory."""

    def __init__(self, batch: Any, flag: torch.Tensor):
        self.batch, self.flag = batch, flag

    def take(self, pin: bool = False) -> Any:
        if self.batch is None:
            raise RuntimeError("this batch was taken already: its slab belongs to the worker again")
        copy = (lambda t: t.pin_memory()) if pin else (lambda t: t.clone(memory_format=torch.preserve_format))
        batch = map_tensors(self.batch, copy)
        self.flag.fill_(0)  # after the copy: the worker may now write the next batch into the slab
        self.batch = self.flag = None
        return batch

    def pin_memory(self, device: Any = None) -> Any:
        return self.take(pin=True)


def take(batch: Any) -> Any:
    """The batch in this process's memory (a :class:`SlabBatch` is copied out and its slab freed), else as is."""
    return batch.take() if isinstance(batch, SlabBatch) else batch


class SharedBatches:
    """A ``collate_fn`` for loader workers: every batch goes into a free shared slab of this worker, reused batch
    after batch (at most ``max_slabs`` per worker; they grow to the largest batch). The default collate
    (``collate_samples``) stacks straight into the slab; a custom ``collate`` must stack into ordinary memory and its
    tensors are then copied in. Outside a worker it is the plain collate. The consumer calls :func:`take` on every
    batch."""

    def __init__(self, collate: Callable | None = None, max_slabs: int = 8):
        self.collate = collate if collate is not None else partial(collate_samples, shared=False)
        self._into_slab = collate is None  # collate_samples takes the slab as its allocator
        self.max_slabs = max_slabs
        self._slabs: list[torch.Tensor] = []
        self._size = HEADER  # bytes the largest batch so far needed
        self._pid = os.getpid()

    def __call__(self, samples: list) -> Any:
        if get_worker_info() is None:
            return self.collate(samples)
        if os.getpid() != self._pid:
            self._slabs, self._size, self._pid = [], HEADER, os.getpid()
        i = self._free_slab(self._size)
        if i is None:  # all held by the main process: torch's way (fresh shared memory)
            return self.collate(samples)
        writer = _SlabWriter(self._slabs[i])
        batch = self.collate(samples, alloc=writer) if self._into_slab else self.collate(samples)
        batch = map_tensors(batch, writer.place)  # what was not stacked into the slab is copied in
        self._size = max(self._size, writer.needed)
        if writer.needed > writer.slab.numel():  # a new largest batch (the first one, mostly): into a slab that fits
            self._slabs[i] = _new_slab(writer.needed)
            writer = _SlabWriter(self._slabs[i])
            batch = map_tensors(batch, writer.place)
        return SlabBatch(batch, writer.slab[:1])

    def _free_slab(self, size: int) -> int | None:
        """The index of a slab of at least ``size`` bytes the main process does not hold: a free one (grown if too
        small), a new one while fewer than ``max_slabs`` exist, else None."""
        for i, slab in enumerate(self._slabs):
            if int(slab[0]) == 0:
                if slab.numel() < size:
                    self._slabs[i] = _new_slab(size)
                return i
        if len(self._slabs) < self.max_slabs:
            self._slabs.append(_new_slab(size))
            return len(self._slabs) - 1
        return None


class _SlabWriter:
    """Marks one slab held and hands out consecutive, aligned pieces of it (an
    :data:`~domainfm.data.collate.Alloc`); counts the bytes the whole batch needs, fitting or not (a slab too small
    for a new largest batch is replaced by one that fits)."""

    def __init__(self, slab: torch.Tensor):
        slab[0] = 1  # held from now on, until the main process has taken the batch
        self.slab, self.used, self.missing = slab, HEADER, 0
        self._ptr = slab.untyped_storage().data_ptr()

    @property
    def needed(self) -> int:
        return self.used + self.missing

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype, stride: tuple[int, ...] | None = None):
        nbytes = math.prod(shape) * dtype.itemsize
        span = _aligned(nbytes)
        if self.used + span > self.slab.numel():
            return None
        piece = self.slab[self.used : self.used + nbytes].view(dtype)
        self.used += span
        return piece.view(shape) if stride is None else piece.as_strided(shape, stride)

    def place(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` if it lies in this slab already, else a copy in it (``t`` itself if there is no room)."""
        if t.untyped_storage().data_ptr() == self._ptr:
            return t
        t = _dense(t)
        piece = self(tuple(t.shape), t.dtype, t.stride())
        if piece is None:
            self.missing += _aligned(t.numel() * t.element_size())
            return t
        return piece.copy_(t)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _new_slab(size: int) -> torch.Tensor:
    """Shared bytes with a quarter of headroom, so that slightly larger batches fit later."""
    return torch.zeros(size + size // 4, dtype=torch.uint8).share_memory_()

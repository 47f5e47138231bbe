"""Batches through reused shared slabs: same values as torch's collate, slabs reused only once taken, no batch
overwritten while held, pinned copies, a clear error for a second take."""

from functools import partial

import numpy as np
import pytest
import torch
from domainfm.data import shared_batches
from domainfm.data.collate import collate_samples
from domainfm.data.shared_batches import HEADER, SharedBatches, SlabBatch, take
from torch.utils.data import DataLoader, Dataset


class Samples(Dataset):
    """Synthetic samples whose values encode their index: uint8 HWC-backed images, float vectors, lists of crops."""

    def __len__(self) -> int:
        return 200

    def __getitem__(self, i: int) -> dict:
        tile = np.full((6, 5, 3), i % 251, dtype=np.uint8)
        return {
            "image": torch.from_numpy(tile).permute(2, 0, 1),
            "x": torch.full((2,), float(i)),
            "crops": [torch.full((3, 2, 2), float(i)), torch.full((3, 4, 4), -float(i))],
            "meta": i,
        }


def _check(batch: dict) -> list[int]:
    ids = batch["meta"]
    as_float = torch.tensor(ids, dtype=torch.float32)
    assert torch.equal(batch["x"][:, 0], as_float) and torch.equal(batch["crops"][1][:, 0, 0, 0], -as_float)
    assert torch.equal(batch["image"][:, 0, 0, 0], torch.tensor(ids) % 251)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    return ids


def test_equal_to_torch_collate_and_no_batch_overwritten_while_held():
    loader = DataLoader(Samples(), batch_size=8, num_workers=2, collate_fn=SharedBatches(max_slabs=3))
    reference = DataLoader(Samples(), batch_size=8, num_workers=0, collate_fn=collate_samples)
    held, seen, kinds = [], [], set()
    for j, (batch, ref) in enumerate(zip(loader, reference)):
        kinds.add(type(batch).__name__)
        if j < 5:  # keep the first batches untaken: their slabs must not be reused (each worker has 3)
            held.append((batch, ref))
            continue
        was_slab, got = isinstance(batch, SlabBatch), take(batch)
        seen += _check(got)
        assert all(torch.equal(a, b) for a, b in zip(got["crops"], ref["crops"]))
        assert torch.equal(got["image"], ref["image"])
        assert got["image"].is_shared() != was_slab  # taken: copied into this process's memory
    for batch, ref in held:
        got = take(batch)
        seen += _check(got)
        assert torch.equal(got["image"], ref["image"])
    assert sorted(seen) == list(range(200))
    # held slabs forced new ones, then the default path once a worker's 3 were held; after that, slabs again
    assert kinds == {"SlabBatch", "dict"}


def test_slabs_are_reused_and_taken_once():
    collate = SharedBatches()
    loader = DataLoader(Samples(), batch_size=10, num_workers=1, collate_fn=collate, prefetch_factor=2)
    flags = []  # holding the flags keeps this process's mapping of each slab, so a reused slab maps to the same place
    for batch in loader:
        assert isinstance(batch, SlabBatch) and int(batch.flag) == 1
        flags.append(batch.flag)
        _check(take(batch))  # frees the slab (the worker may refill it at once)
        with pytest.raises(RuntimeError, match="taken already"):
            batch.take()
    slabs = {f.untyped_storage().data_ptr() for f in flags}
    assert len(flags) == 20 and len(slabs) <= 4  # 2 prefetched + 1 in hand (+1 in flight), reused
    assert take({"x": 1}) == {"x": 1}  # anything else passes through
    assert collate([Samples()[0], Samples()[1]])["meta"] == [0, 1]  # outside a worker: the plain collate


def _leaves(batch: dict) -> list[torch.Tensor]:
    return [batch["image"], batch["x"], *batch["crops"]]


def _nbytes(batch: dict) -> int:
    """What a batch needs in a slab: the header, then every tensor aligned to 64 bytes."""
    return HEADER + sum(-(-t.numel() * t.element_size() // 64) * 64 for t in _leaves(batch))


@pytest.mark.parametrize("collate", [None, partial(collate_samples, shared=False)], ids=["default", "custom"])
def test_batches_go_straight_into_a_slab_that_fits(monkeypatch, collate):
    monkeypatch.setattr(shared_batches, "get_worker_info", lambda: object())  # as inside a loader worker
    make = SharedBatches(collate)
    outs = []
    stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda *a, **k: outs.append(k.get("out")) or stack(*a, **k))
    # the first batch sizes the slab (it goes in after collating); a larger one (12 > 8 + 25 % headroom) grows it
    for n, fits in ((8, False), (8, True), (12, False), (8, True), (12, True)):
        samples = [Samples()[i] for i in range(n)]
        outs.clear()
        batch = make(samples)
        slab = batch.flag.untyped_storage().data_ptr()
        assert all(t.untyped_storage().data_ptr() == slab for t in _leaves(batch.batch))
        if collate is None:  # the default collate stacks into the slab itself, no private batch first
            assert len(outs) == 4 and all(o is not None for o in outs) == fits  # else the rest is copied in
        expected = collate_samples(samples, shared=False)
        got = take(batch)
        assert all(torch.equal(a, b) for a, b in zip(_leaves(got), _leaves(expected)))
        assert got["image"].is_contiguous(memory_format=torch.channels_last)
        assert make._size >= _nbytes(expected)
    assert make._size == _nbytes(expected) and len(make._slabs) == 1  # each batch taken: one slab, reused


def test_pin_memory_thread_takes_the_batch():
    if not torch.cuda.is_available():
        batch = SlabBatch({"x": torch.ones(2)}, torch.ones(1, dtype=torch.uint8))
        with pytest.raises(RuntimeError):  # pinning needs an accelerator; the slab stays marked in use
            batch.pin_memory()
        assert int(batch.flag) == 1
        return
    loader = DataLoader(Samples(), batch_size=8, num_workers=1, collate_fn=SharedBatches(), pin_memory=True)
    for batch in loader:
        assert isinstance(batch, dict) and batch["image"].is_pinned()
        _check(batch)

"""Batching of sample dicts: tensors are stacked, ``meta`` stays a list, ``skipped`` is concatenated."""

from __future__ import annotations

from typing import Any

from torch.utils.data import default_collate


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything but ``meta``/``skipped`` goes through torch's ``default_collate``, which, inside a loader worker,
    stacks tensors straight into shared memory (no extra copy on the way to the main process)."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "meta":
            batch[key] = values
        elif key == "skipped":
            batch[key] = [x for v in values for x in v]
        else:
            batch[key] = default_collate(values)
    return batch

"""Batching of sample dicts: tensors are stacked, ``meta`` stays a list, ``skipped`` is concatenated."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "meta":
            batch[key] = values
        elif key == "skipped":
            batch[key] = [x for v in values for x in v]
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = default_collate(values)
    return batch

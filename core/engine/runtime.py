"""Device, precision and seeding."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
from domainfm.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA device is visible; use trainer.device=cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA when supported, else fp16 (with GradScaler); fp32 on CPU."""
    if name in (None, "auto"):
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"trainer.precision={name} is not one of auto, fp32, bf16, fp16")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA; use bf16 or fp32 on CPU")
    return name


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_workers(value: int | str, device: torch.device) -> int:
    """``auto``: on CUDA up to 8 workers (one core left for the main process); on CPU, where the model shares the
    cores with the workers, ``cpu_count // 2 - 1`` (0 on a 2-core machine: workers there slow training down)."""
    if value != "auto":
        return int(value)
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(0, min(8, cores - 1))
    return max(0, min(8, cores // 2 - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

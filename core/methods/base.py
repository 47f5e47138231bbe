"""The contract between a method and the engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class StepContext:
    """What a method may know about the optimisation step it is computing."""

    step: int
    max_steps: int

    @property
    def progress(self) -> float:
        return self.step / max(1, self.max_steps)


class Method(nn.Module):
    """A trainable SSL method.

    ``forward(batch, ctx)`` returns a dict with a scalar ``"loss"`` (and any other scalars to log);
    ``after_step(ctx)`` runs after each optimizer step (EMA teachers); ``backbone`` (an attribute or a
    property; register each module once so state dicts hold no aliases) is the timm model that ``export``
    writes. ``no_weight_decay()`` may name extra parameters exempt from weight decay; a method may instead
    define ``optim_groups() -> list[dict]`` (``params``, ``wd_scale``, ``lr_scale``) for full control, e.g.
    layer-wise lr decay.
    """

    def forward(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Hook after gradient clipping, before the optimizer step (e.g. freeze a layer by dropping its grads)."""

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        """Hook after the optimizer step (e.g. EMA teacher update). Default: nothing."""

    def no_weight_decay(self) -> set[str]:
        return set()

    def report(self, batch: dict[str, Any], out_dir: Path, preprocess: dict[str, Any]) -> list[Path]:
        """Method-specific figures for ``<run_dir>/report`` (e.g. MAE reconstructions). Default: none."""
        return []

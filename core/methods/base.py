"""The contract between a method and the engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from domainfm.backbones.tokens import forward_tokens
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

    def grad_clip_groups(self) -> list[list[nn.Parameter]] | None:
        """Parameter lists whose gradient norms are clipped separately to ``trainer.clip_grad`` (DINOv2 clips each
        module); ``None``: one global norm over all parameters."""
        return None

    rank_pooling = "cls"  # how embed() pools the backbone's tokens: cls, or mean (of the patch tokens)

    def rank_inputs(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """One input per sample of a collated training batch, for the collapse monitor: ``image``, ``view1`` or the
        first global crop; ``None``: nothing to embed (the monitor stays off, as for backbones that are not ViTs)."""
        if not hasattr(getattr(self, "backbone", None), "forward_features"):
            return None
        for key in ("image", "view1"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        crops = batch.get("global_crops")
        return crops[0] if crops else None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, D)`` of ``images`` (what the collapse monitor ranks)."""
        tokens, prefix = forward_tokens(self.backbone, images, default_prefix=0)
        if self.rank_pooling == "cls" and prefix:
            return tokens[:, 0]
        return tokens[:, prefix:].mean(dim=1)

    def export_files(self, directory: Path, config: dict[str, Any]) -> None:
        """Files the export holds beside the backbone (``config``: the run's resolved config), e.g. a CLIP text tower
        and its tokenizer. Written into the export's temporary folder, so they land atomically with it. Default:
        none."""

    def report(self, batch: dict[str, Any], out_dir: Path, preprocess: dict[str, Any]) -> list[Path]:
        """Method-specific figures for ``<run_dir>/report`` (e.g. MAE reconstructions). Default: none."""
        return []

"""Point-MAE (Pang et al., "Masked Autoencoders for Point Cloud Self-supervised Learning", ECCV 2022), after the
official ``models/Point_MAE.py`` and ``cfgs/pretrain.yaml``.

Per cloud: ``num_group`` patches (:class:`~domainfm.three_d.point_encoder.PointTransformer`); exactly
``int(mask_ratio * G)`` of them masked at random (``mask_type: rand``; the mask is drawn in the data pipeline from
the sample's seed, so a resumed run draws the same masks); the encoder sees the visible patches only. The decoder
(``decoder_depth`` pre-norm blocks, its own position MLP added at every block) takes ``[visible tokens | mask
token x M]`` with the positions of ``[visible | masked]`` centres, LayerNorm on the mask-token outputs, and
``Conv1d(D, 3K)`` predicts each masked patch's ``K`` points (in the patch's centred frame). Loss:
Chamfer-L2 between predicted and true masked patches (``mean d1 + mean d2`` of squared distances,
``loss: cdl2``; ``cdl1`` is the L1 variant). Decoder Linear layers are Xavier-uniform initialised and the mask
token truncated-normal (std 0.02), as the official code; defaults 0.6 mask, decoder 4 x 6 heads, drop path 0.1."""

from __future__ import annotations

from typing import Any

import torch
from domainfm.methods.base import Method, StepContext
from domainfm.three_d.grouping import chamfer_l1, chamfer_l2
from domainfm.three_d.point_encoder import PointTransformer, blocks, position_mlp
from timm.layers import trunc_normal_
from torch import nn


class PointMAE(Method):
    def __init__(
        self,
        backbone: PointTransformer,
        mask_ratio: float = 0.6,
        decoder_depth: int = 4,
        decoder_heads: int = 6,
        drop_path_rate: float = 0.1,
        loss: str = "cdl2",
    ):
        super().__init__()
        if loss not in ("cdl2", "cdl1"):
            raise ValueError(f"loss={loss!r}; choose cdl2 or cdl1")
        self.encoder = backbone
        self.mask_ratio, self.loss_name = float(mask_ratio), loss
        dim, k = backbone.embed_dim, backbone.group_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = position_mlp(dim)
        self.decoder = blocks(dim, decoder_depth, decoder_heads, 4.0, drop_path_rate)
        self.decoder_norm = nn.LayerNorm(dim)
        self.increase_dim = nn.Conv1d(dim, 3 * k, 1)
        self.decoder.apply(_xavier)
        trunc_normal_(self.mask_token, std=0.02)

    @property
    def backbone(self) -> PointTransformer:
        return self.encoder

    def num_masked(self) -> int:
        return int(self.mask_ratio * self.encoder.num_group)

    def random_mask(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """``(B, G)`` bool, exactly :meth:`num_masked` True per row, uniformly at random."""
        g = self.encoder.num_group
        order = torch.rand(batch_size, g, generator=generator).argsort(dim=1)
        mask = torch.zeros(batch_size, g, dtype=torch.bool)
        mask.scatter_(1, order[:, : self.num_masked()], True)
        return mask.to(device)

    def reconstruct(self, points: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predicted, true)`` masked patches, each ``(B * M, K, 3)`` in the patches' centred frames."""
        patches, centers = self.encoder.group(points)
        b, g, k, _ = patches.shape
        x_vis = self.encoder.encode(patches, centers, ~mask)
        m = int(mask[0].sum())
        d = x_vis.shape[-1]
        pos = torch.cat([self.decoder_pos_embed(centers[~mask]).reshape(b, -1, d),
                         self.decoder_pos_embed(centers[mask]).reshape(b, m, d)], dim=1)  # fmt: skip
        x = torch.cat([x_vis, self.mask_token.expand(b, m, d)], dim=1)
        for block in self.decoder:
            x = block(x + pos)
        x = self.decoder_norm(x[:, -m:])
        predicted = self.increase_dim(x.transpose(1, 2)).transpose(1, 2).reshape(b * m, k, 3)
        return predicted, patches[mask].reshape(b * m, k, 3)

    def forward(self, batch: dict[str, Any], ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        points = batch["points"]
        mask = batch.get("mask")
        mask = self.random_mask(points.shape[0], device=points.device) if mask is None else mask.to(points.device)
        predicted, true = self.reconstruct(points, mask.bool())
        loss = chamfer_l2(predicted, true) if self.loss_name == "cdl2" else chamfer_l1(predicted, true)
        return {"loss": loss}

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def rank_inputs(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return batch.get("points")

    def embed(self, points: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode(*self.encoder.group(points)).mean(dim=1)


def _xavier(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

"""Two-view contrastive methods: SimCLR (NT-Xent) and MoCo v3 (momentum encoder + predictor)."""

from __future__ import annotations

import torch
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.common.schedules import CosineSchedule
from domainfm.methods.base import Method, StepContext
from domainfm.methods.ema import ema_update, make_teacher
from domainfm.methods.heads import MLPHead
from domainfm.objectives.contrastive import moco_v3_loss, nt_xent_loss
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class SimCLR(Method):
    """Chen et al. 2020: backbone cls token -> 2-layer MLP projector (BN, ReLU) -> NT-Xent, temperature 0.1
    (SimCLR's large-batch setting; lightly uses 0.5 for small batches)."""

    def __init__(
        self, backbone: VisionTransformer, proj_hidden: int = 2048, proj_dim: int = 128, temperature: float = 0.1
    ):
        super().__init__()
        self.encoder = MaskedViT(backbone)
        self.projector = MLPHead(backbone.embed_dim, proj_hidden, proj_dim, nlayers=2, batch_norm=True)
        self.temperature = temperature

    @property
    def backbone(self) -> VisionTransformer:
        return self.encoder.vit

    def forward(self, batch, ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        z = self.projector(self.encoder(torch.cat([batch["view1"], batch["view2"]])).cls)
        z1, z2 = z.chunk(2)
        return {"loss": nt_xent_loss(z1, z2, self.temperature)}


class _Online(nn.Module):
    def __init__(self, backbone: VisionTransformer, hidden: int, dim: int):
        super().__init__()
        self.encoder = MaskedViT(backbone)
        self.projector = MLPHead(backbone.embed_dim, hidden, dim, nlayers=3, batch_norm=True, last_bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x).cls)


class MoCoV3(Method):
    """Chen, Xie, He 2021: projector (3 layers, BN, last BN without affine) and predictor (2 layers) on the online
    branch; momentum branch = EMA of backbone + projector, momentum cosine 0.99 -> 1; temperature 0.2; symmetric loss.
    ``freeze_patch_embed`` keeps the random patch projection fixed (the paper's stability trick for ViTs)."""

    def __init__(
        self,
        backbone: VisionTransformer,
        hidden: int = 4096,
        dim: int = 256,
        temperature: float = 0.2,
        momentum: tuple[float, float] = (0.99, 1.0),
        freeze_patch_embed: bool = True,
    ):
        super().__init__()
        if freeze_patch_embed:
            for p in backbone.patch_embed.parameters():
                p.requires_grad_(False)
        self.online = _Online(backbone, hidden, dim)
        self.predictor = MLPHead(dim, hidden, dim, nlayers=2, batch_norm=True)
        self.momentum_branch = make_teacher(self.online)
        self.temperature = temperature
        self.momentum = CosineSchedule(momentum[0], momentum[1])

    @property
    def backbone(self) -> VisionTransformer:
        return self.online.encoder.vit

    def train(self, mode: bool = True):
        super().train(mode)
        self.momentum_branch.train(mode)  # BN statistics of the key branch follow the batch, as in the reference
        return self

    def forward(self, batch, ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        x1, x2 = batch["view1"], batch["view2"]
        q1, q2 = self.predictor(self.online(x1)), self.predictor(self.online(x2))  # per-view BN, as the reference
        with torch.no_grad():
            k1, k2 = self.momentum_branch(x1), self.momentum_branch(x2)
        return {"loss": moco_v3_loss(q1, q2, k1, k2, self.temperature)}

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        ema_update(self.momentum_branch, self.online, self.momentum(ctx.step, ctx.max_steps))

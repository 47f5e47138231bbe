"""Two-view contrastive methods: SimCLR (NT-Xent) and MoCo v3 (momentum encoder + predictor)."""

from __future__ import annotations

import torch
from domainfm.backbones.init import mocov3_init_
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.common.schedules import CosineSchedule
from domainfm.methods.base import Method, StepContext
from domainfm.methods.ema import ema_update, make_teacher
from domainfm.methods.heads import MLPHead
from domainfm.objectives.contrastive import moco_v3_loss, nt_xent_loss
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class SimCLR(Method):
    """Chen et al. 2020 (google-research/simclr, ``model_util.projection_head``, ``objective.add_contrastive_loss``):
    backbone cls token -> projector ``Linear -> BN -> ReLU`` (``proj_layers - 1`` times) -> ``Linear`` without bias ->
    BatchNorm with scale and no shift -> NT-Xent (2N - 2 negatives), temperature 0.1 (SimCLR's large-batch setting;
    lightly uses 0.5 for small batches). SimCLR v1 uses 2 projector layers (the default here), v2 3, output 128.
    The official loss is the *sum* of the two directions (``loss_a + loss_b``); this is their mean, half of it: with
    Adam/AdamW the factor only rescales the logged loss (the update is invariant to it up to ``eps``)."""

    def __init__(
        self,
        backbone: VisionTransformer,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.1,
        proj_layers: int = 2,
    ):
        super().__init__()
        self.encoder = MaskedViT(backbone)
        self.projector = MLPHead(
            backbone.embed_dim, proj_hidden, proj_dim, nlayers=proj_layers, batch_norm=True, last_bn="scale"
        )
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
        self.projector = MLPHead(backbone.embed_dim, hidden, dim, nlayers=3, batch_norm=True, last_bn="affine_free")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x).cls)


class MoCoV3(Method):
    """Chen, Xie, He 2021 (facebookresearch/moco-v3, ``moco/builder.py::MoCo_ViT``): projector
    ``_build_mlp(3, D, hidden, dim)`` and predictor ``_build_mlp(2, dim, hidden, dim)``, both ending in
    ``BatchNorm1d(affine=False)`` (``last_bn=True``), Linear layers without bias; momentum branch = EMA of backbone +
    projector, momentum ``1 - (1 + cos(pi t / T)) (1 - m0) / 2`` with ``m0 = 0.99``; loss
    ``ctr(q1, k2) + ctr(q2, k1)``, ``ctr = 2 tau CE(q k^T / tau)``, ``tau = 0.2``. ``freeze_patch_embed`` keeps the
    random patch projection fixed (``--stop-grad-conv1``, the paper's stability trick). ``init="mocov3"`` applies
    ``vits.py``'s initialisation (:func:`~domainfm.backbones.init.mocov3_init_`: fixed 2D sin-cos positions, Xavier
    with q/k/v split) to a freshly created backbone; loaded weights are kept; ``init="keep"`` leaves timm's."""

    def __init__(
        self,
        backbone: VisionTransformer,
        hidden: int = 4096,
        dim: int = 256,
        temperature: float = 0.2,
        momentum: tuple[float, float] = (0.99, 1.0),
        freeze_patch_embed: bool = True,
        init: str = "mocov3",
    ):
        super().__init__()
        if init not in ("mocov3", "keep"):
            raise ValueError(f"init={init!r}: use mocov3 (MoCo v3's ViT initialisation) or keep (timm's / the loaded)")
        if init == "mocov3" and getattr(backbone, "domainfm_weights", "") is None:  # fresh, not loaded
            mocov3_init_(backbone)
        if freeze_patch_embed:
            for p in backbone.patch_embed.parameters():
                p.requires_grad_(False)
        self.online = _Online(backbone, hidden, dim)
        self.predictor = MLPHead(dim, hidden, dim, nlayers=2, batch_norm=True, last_bn="affine_free")
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

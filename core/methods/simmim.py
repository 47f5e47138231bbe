"""SimMIM (Xie et al. 2022): masked tokens replaced by a learned token in the encoder input, a linear decoder
(1x1 conv to ``p*p*C`` channels + pixel shuffle) reconstructs the image, L1 on masked pixels
(``domainfm.objectives.simmim``). Reference defaults: mask ratio 0.6 with 32-pixel mask units."""

from __future__ import annotations

import torch
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.methods.base import Method, StepContext
from domainfm.objectives.simmim import simmim_loss
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class SimMIM(Method):
    rank_pooling = "mean"  # the class token is not what MIM trains

    def __init__(self, backbone: VisionTransformer):
        super().__init__()
        self.encoder = MaskedViT(backbone, mask_token=True)
        self.patch_size = backbone.patch_embed.patch_size[0]
        self.in_chans = backbone.patch_embed.proj.in_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(backbone.embed_dim, self.patch_size**2 * self.in_chans, kernel_size=1),
            nn.PixelShuffle(self.patch_size),
        )

    @property
    def backbone(self) -> VisionTransformer:
        return self.encoder.vit

    def forward(self, batch, ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        images, mask = batch["image"], batch["mask"]
        out = self.encoder(images, mask, mode="replace")
        h, w = out.grid
        feat = out.patches.transpose(1, 2).reshape(images.shape[0], -1, h, w)
        recon = self.decoder(feat)
        return {"loss": simmim_loss(images, recon, mask, self.patch_size)}

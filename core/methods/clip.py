"""CLIP-style image-text pretraining (Radford et al. 2021) with a pluggable text tower; SigLIP loss optional
(Zhai et al. 2023). The image tower is the exported ViT (cls token) + a linear projection."""

from __future__ import annotations

import torch
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.methods.base import Method, StepContext
from domainfm.objectives.clip import LogitScale
from timm.models.vision_transformer import VisionTransformer
from torch import nn


def open_clip_text_tower(
    embed_dim: int = 256,
    width: int = 256,
    heads: int = 4,
    layers: int = 4,
    context_length: int = 77,
    vocab_size: int = 49408,
) -> nn.Module:
    """open_clip's causal text transformer (argmax/EOT pooling, linear projection), randomly initialised; pair with
    ``open_clip.get_tokenizer("ViT-B-32")`` (its BPE vocabulary ships in the wheel)."""
    from open_clip.transformer import TextTransformer

    return TextTransformer(
        context_length=context_length,
        vocab_size=vocab_size,
        width=width,
        heads=heads,
        layers=layers,
        output_dim=embed_dim,
    )


class CLIP(Method):
    def __init__(self, backbone: VisionTransformer, text_tower: nn.Module, embed_dim: int = 256, loss: str = "clip"):
        super().__init__()
        self.encoder = MaskedViT(backbone)
        self.image_proj = nn.Linear(backbone.embed_dim, embed_dim, bias=False)
        self.text_tower = text_tower
        self.logits = LogitScale(loss)

    @property
    def backbone(self) -> VisionTransformer:
        return self.encoder.vit

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.encoder(images).cls)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_tower(tokens)

    def forward(self, batch, ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        image, text = self.encode_image(batch["image"]), self.encode_text(batch["text"])
        return {"loss": self.logits(image, text), "logit_scale": self.logits.logit_scale.detach().exp()}

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        """Clamp the temperature parameter as open_clip does (the logged ``logit_scale`` is the clamped value)."""
        self.logits.clamp_()

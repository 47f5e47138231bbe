"""Backbones: 2D ViTs over timm with a masking wrapper."""

from domainfm.backbones.masked_vit import MaskedViT
from domainfm.backbones.vit import create_vit

__all__ = ["MaskedViT", "create_vit"]

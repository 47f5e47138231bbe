"""MAE's weight initialisation (He et al. 2022, ``models_mae.py::initialize_weights``), for training from scratch.

- ``nn.Linear``: Xavier-uniform weights, zero biases; ``nn.LayerNorm``: weight 1, bias 0;
- patch embedding: Xavier-uniform on the flattened ``(out, in * p * p)`` kernel (initialised as a linear layer);
- class / register tokens: normal(std 0.02);
- the ViT's position embedding: fixed 2D sin-cos (prefix positions zero), ``requires_grad=False``.

timm's default (truncated normal 0.02, learned positions) is what DINOv2/iBOT use; MAE's published code uses the
above, and lightly follows it too.
"""

from __future__ import annotations

import torch
from domainfm.backbones.pos_embed import sincos_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn


def _linear_and_norm_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def mae_init_(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` in place as MAE does (a timm ViT, the 3D ViT, or a decoder); returns it."""
    model.apply(_linear_and_norm_init)
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if proj is not None:
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
    for name in ("cls_token", "reg_token"):
        token = getattr(model, name, None)
        if isinstance(token, nn.Parameter):
            nn.init.normal_(token, std=0.02)
    if isinstance(model, VisionTransformer) and model.pos_embed is not None:
        grid = model.patch_embed.grid_size
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        table = torch.zeros_like(model.pos_embed)
        table[0, prefix:] = sincos_pos_embed(tuple(grid), model.embed_dim)
        model.pos_embed.copy_(table)
        model.pos_embed.requires_grad_(False)
    return model

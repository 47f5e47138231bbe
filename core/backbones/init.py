"""Published weight initialisations of ViTs trained from scratch: MAE's and MoCo v3's.

MAE (He et al. 2022, ``models_mae.py::initialize_weights``):

- ``nn.Linear``: Xavier-uniform weights, zero biases; ``nn.LayerNorm``: weight 1, bias 0;
- patch embedding: Xavier-uniform on the flattened ``(out, in * p * p)`` kernel (initialised as a linear layer);
- class / register tokens: normal(std 0.02);
- the ViT's position embedding: fixed 2D sin-cos (prefix positions zero), ``requires_grad=False``.

timm's default (truncated normal 0.02, learned positions) is what DINOv2/iBOT use; MAE's published code uses the
above, and lightly follows it too.

MoCo v3 (Chen, Xie, He 2021, ``moco-v3/vits.py::VisionTransformerMoCo``):

- ``qkv`` Linear: uniform ``+-sqrt(6 / (out / 3 + in))`` (Xavier over each of q, k, v), other Linear layers
  Xavier-uniform, zero biases;
- patch embedding: uniform ``+-sqrt(6 / (C p^2 + D))``, zero bias;
- class token: normal(std 1e-6);
- position embedding: fixed 2D sin-cos (temperature 1e4, ``D/4`` frequencies, ``[sin, cos]`` of the row then the
  column coordinate), zero for the class token, ``requires_grad=False``. (The official code builds the grid with
  ``meshgrid(w, h)``, which labels the row coordinate "w"; on its square grids that is the layout written here.)
"""

from __future__ import annotations

import math

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


@torch.no_grad()
def mocov3_init_(model: VisionTransformer) -> VisionTransformer:
    """Re-initialise a timm ViT in place as MoCo v3 does (see the module docstring); returns it."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if name.endswith("qkv"):
                bound = math.sqrt(6.0 / (module.weight.shape[0] // 3 + module.weight.shape[1]))
                nn.init.uniform_(module.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    proj = model.patch_embed.proj
    bound = math.sqrt(6.0 / (math.prod(proj.weight.shape[1:]) + proj.weight.shape[0]))
    nn.init.uniform_(proj.weight, -bound, bound)
    if proj.bias is not None:
        nn.init.zeros_(proj.bias)
    if isinstance(model.cls_token, nn.Parameter):
        nn.init.normal_(model.cls_token, std=1e-6)
    if model.pos_embed is not None:
        grid, dim = tuple(model.patch_embed.grid_size), model.embed_dim
        if dim % 4:
            raise ValueError(f"MoCo v3's 2D sin-cos positions need an embedding dim divisible by 4, got {dim}")
        row_col = sincos_pos_embed(grid, dim)  # [sin, cos](column), [sin, cos](row)
        row_col = torch.cat([row_col[:, dim // 2 :], row_col[:, : dim // 2]], dim=1)
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        table = torch.zeros_like(model.pos_embed)
        table[0, prefix:] = row_col
        model.pos_embed.copy_(table)
        model.pos_embed.requires_grad_(False)
    return model

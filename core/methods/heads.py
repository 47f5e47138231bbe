"""Projection heads used by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DINOHead(nn.Module):
    """DINO/DINOv2 head: MLP (``nlayers`` Linear layers, GELU) to a ``bottleneck_dim`` vector, L2-normalised, then a
    weight-normalised linear layer without bias to ``out_dim`` prototypes (weight norm ``g`` initialised to 1).
    DINOv2 defaults: hidden 2048, bottleneck 256, 3 layers, 65536 prototypes."""

    def __init__(
        self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3
    ):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(nlayers, 1) - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)


class MLPHead(nn.Module):
    """``Linear -> [BN] -> ReLU`` repeated, then a final ``Linear`` and optionally a final BatchNorm:

    - ``last_bn="affine_free"``: ``BatchNorm1d(affine=False)``, MoCo v3's ``_build_mlp(..., last_bn=True)`` (projector
      and predictor of its ViT models);
    - ``last_bn="scale"``: BatchNorm with a learned scale and no shift, SimCLR's final ``linear_layer(use_bias=False,
      use_bn=True)`` (``BatchNormalization(center=False)``); the BN's shift is kept at zero and frozen.

    Linear layers followed by a BatchNorm have no bias (both references)."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 256,
        nlayers: int = 2,
        batch_norm: bool = True,
        last_bn: str | None = None,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(nlayers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        if last_bn not in (None, "affine_free", "scale"):
            raise ValueError(f"last_bn={last_bn!r}: use null, affine_free (MoCo v3) or scale (SimCLR)")
        layers.append(nn.Linear(dim, out_dim, bias=last_bn is None))
        if last_bn == "affine_free":
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        elif last_bn == "scale":
            bn = nn.BatchNorm1d(out_dim)
            bn.bias.requires_grad_(False)  # center=False: the shift stays 0
            layers.append(bn)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

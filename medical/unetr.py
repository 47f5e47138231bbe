"""UNETR (Hatamizadeh et al., WACV 2022, arXiv 2103.10504) over a domainfm ViT encoder, 2D or 3D.

monai's ``UNETR`` builds its own ViT; this keeps the paper's decoder - monai's own blocks, wired as
``monai.networks.nets.UNETR`` wires them - under any domainfm backbone (a timm 2D ViT or
:class:`~domainfm.backbones.vit3d.VisionTransformer3D`), so pretrained weights go in unchanged:

- ``encoder1 = UnetrBasicBlock(input)`` at full resolution (``feature_size`` channels);
- for a patch size ``p = 2^L`` the skips ``j = 1 .. L-1`` take the (un-normalised) output of block
  ``round(depth * j / L)`` counted from 0 (blocks 3, 6, 9 of 12 for ``p = 16``: monai's
  ``hidden_states_out[3 / 6 / 9]``), each brought to resolution
  ``1 / 2^j`` by ``UnetrPrUpBlock`` (``L - 1 - j`` extra up-convolutions) with ``feature_size * 2^j`` channels;
- the final normed tokens go up through ``UnetrUpBlock``s, concatenated with the skips, to ``UnetOutBlock``
  (logits per class). ``norm_name="instance"``, ``res_block=True``, ``conv_block=True`` and ``feature_size=16``
  are monai's / UNETR's defaults; with ``p = 16`` the wiring is exactly monai's UNETR.

Deviation: the paper's ViT is monai's with learned positions; ours is whichever backbone was pretrained. Patch
sizes must be equal along every axis and a power of two (>= 4). Option (ours, off by default): ``skip_norm=True``
puts a fresh LayerNorm on each skip's tokens before its ``UnetrPrUpBlock``; an MAE-pretrained ViT's residual stream
can be an order of magnitude larger than at initialisation (hippocampus MAE-3D: token norms ~480 vs ~25), which
drowns the final normed tokens in the decoder's first concatenation."""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn


def spatial_dims(encoder: nn.Module) -> int:
    return encoder.patch_embed.proj.weight.ndim - 2


def skip_layers(depth: int, levels: int) -> list[int]:
    """0-based block indices feeding the skips: ``round(depth * j / levels)`` for ``j = 1 .. levels - 1``."""
    return [min(depth - 1, round(depth * j / levels)) for j in range(1, levels)]


class UNETR(nn.Module):
    """``encoder`` (a ViT) -> UNETR decoder -> ``out_channels`` logits at the input's resolution."""

    def __init__(
        self,
        encoder: nn.Module,
        out_channels: int,
        feature_size: int = 16,
        norm_name: str = "instance",
        res_block: bool = True,
        skip_norm: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        dims = self.dims = spatial_dims(encoder)
        patch = tuple(encoder.patch_embed.patch_size)
        levels = math.log2(patch[0]) if len(set(patch)) == 1 else 0.0
        if levels != int(levels) or levels < 2:
            raise ValueError(
                f"UNETR needs an equal, power-of-two patch size >= 4 on every axis; the encoder has {patch}"
            )
        self.levels = int(levels)
        self.patch = patch[0]
        hidden = int(encoder.embed_dim)
        in_chans = int(encoder.patch_embed.proj.in_channels)
        self.layers = skip_layers(len(encoder.blocks), self.levels)
        fs = feature_size
        self.encoder1 = UnetrBasicBlock(dims, in_chans, fs, 3, 1, norm_name, res_block=res_block)
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(dims, hidden, fs * 2**j, self.levels - 1 - j, 3, 1, 2, norm_name, True, res_block)
            for j in range(1, self.levels)
        )
        ups = [UnetrUpBlock(dims, hidden, fs * 2 ** (self.levels - 1), 3, 2, norm_name, res_block)]
        ups += [
            UnetrUpBlock(dims, fs * 2 ** (j + 1), fs * 2**j, 3, 2, norm_name, res_block)
            for j in range(self.levels - 2, -1, -1)
        ]
        self.ups = nn.ModuleList(ups)
        self.out = UnetOutBlock(dims, fs, out_channels)
        self.skip_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in self.skips) if skip_norm else None

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(last tokens as a map (B, D, *grid), [skip block outputs as maps])``."""
        grid = [s // self.patch for s in x.shape[2:]]
        wanted = sorted(set(self.layers))  # shallow encoders may feed two skips from one block
        if self.dims == 3:
            final, hidden = self.encoder.forward_intermediates(x, wanted)
        else:
            final, hidden = self.encoder.forward_intermediates(x, indices=wanted, output_fmt="NCHW", norm=False)
        by_block = dict(zip(wanted, hidden))
        prefix = int(self.encoder.num_prefix_tokens)
        top = final[:, prefix:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return top, [by_block[i] for i in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % self.patch for s in x.shape[2:]):
            raise ValueError(f"input size {tuple(x.shape[2:])} is not divisible by the patch size {self.patch}")
        top, hidden = self._features(x)
        if self.skip_norms is not None:  # LayerNorm over the channels of each (B, D, *grid) map
            hidden = [norm(h.movedim(1, -1)).movedim(-1, 1) for norm, h in zip(self.skip_norms, hidden)]
        skips = [self.encoder1(x)] + [block(h) for block, h in zip(self.skips, hidden)]
        y = top
        for up, skip in zip(self.ups, reversed(skips)):
            y = up(y, skip)
        return self.out(y)

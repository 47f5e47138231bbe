"""I2P-MAE (Zhang et al., "Learning 3D Representations from 2D Pre-trained Models via Image-to-Point Masked
Autoencoders", CVPR 2023), after the official ``models/I2P_MAE.py``, ``models/modules.py``,
``tools/runner_pretrain.py`` and ``cfgs/pre-training/i2p-mae.yaml``.

One step, per cloud (2048 points in the official config):

1. The cloud is cut into levels (:class:`~domainfm.three_d.hierarchical_encoder.HierarchicalPointEncoder`: 512 /
   256 / 64 centres with 16 / 8 / 8 neighbours).
2. 2D guidance, no gradient: three axis-aligned depth images (:func:`~domainfm.three_d.depth_projection.
   project_depth`, 224 px, ImageNet mean / std as the official code, also for CLIP) through a frozen 2D ViT
   (``guide``: any backbone source ``load_backbone`` reads; the official one is CLIP ViT-B/16). Its last block's
   class-token attention over the patches (heads averaged) is back-projected to the top-level centres and averaged
   over the views: the saliency; its final patch features are the semantic targets.
3. 2D-guided masking (:func:`~domainfm.three_d.image_guidance.guided_mask`): ``int(0.8 G)`` of the ``G`` = 64 top
   tokens masked, the visible ones drawn by ``multinomial(softmax(saliency / mask_temperature))`` without
   replacement (``mask_temperature`` = 1 as the official code, where attention probabilities of about 1 / 196 make
   the draw nearly uniform); lower levels: a token is visible when it is a neighbour of a visible token above.
4. The hierarchical encoder on the visible tokens of every level.
5. Decoder (``decoder_dims`` 384 / 192, 1 block each, 6 heads, drop path 0 -> 0.1, Xavier-initialised as
   ``Decoder_Block``): at the top level ``[visible tokens | mask token x M]`` with the positions of ``[visible |
   masked]`` centres; one level down, token propagation (``PointNetFeaturePropagation``: the coarser tokens
   interpolated to this level's centres by inverse squared distance over the 3 nearest, concatenated to this
   level's encoder tokens — zeros where masked —, ``Conv1d + BN + GELU``, then ``decoder_up_blocks`` residual
   ``Conv1d + BN`` blocks), new positions, blocks; a final LayerNorm.
6. Targets at the last decoder level (256 centres of 8 neighbours): masked tokens reconstruct their neighbours'
   coordinates (``Linear(D, 3 k)``, the official ``Conv1d`` of kernel 1; Chamfer-L2 against the centred
   neighbourhood, as Point-MAE); visible tokens regress the 2D features back-projected at each neighbour in the 3
   views (``Linear(D, 3 F k)``, the views concatenated per neighbour, MSE). Loss = ``loss_3d + loss_2d``
   (``runner_pretrain``: unweighted; ``weight_3d`` / ``weight_2d`` default 1).

Official optimisation (recipe ``three_d/i2p_mae``): AdamW lr 1e-3, weight decay 0.05, cosine with 10 warm-up
epochs, batch 64, 2048 points, ``PointcloudScaleAndTranslate`` only (``runner_pretrain`` computes a random rotation
but feeds the unrotated points to the model).

Deviations (ours):

- The 2D features are the guide's final-norm patch tokens (768-d for the recipe's
  ``vit_base_patch16_clip_quickgelu_224.openai``); the official code multiplies CLIP's by its projection
  (``ln_post @ proj``, 512-d), a fixed linear map that timm's headless model drops.
- The official multi-scale masking zeroes the indices of masked groups and scatters them as visible, which makes
  token 0 of the batch's first cloud visible at every lower level whatever its mask; here only the neighbours of
  visible tokens are visible.
- Padded keys are blocked in attention (the official mask also blocks padded queries, whose outputs are dropped:
  the valid tokens' outputs are the same).
- The guide is frozen and left out of the method's checkpoints (it is reloaded from ``guide`` on resume).
- Cosine to the run's last step (the official scheduler's horizon is 400 epochs of a 300-epoch run)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from domainfm.methods.base import Method, StepContext
from domainfm.three_d.depth_projection import back_project, project_depth, to_model_input
from domainfm.three_d.grouping import chamfer_l2, gather_points, square_distances
from domainfm.three_d.hierarchical_encoder import HierarchicalPointEncoder, Levels
from domainfm.three_d.image_guidance import attention_and_features, guided_mask
from domainfm.three_d.point_encoder import blocks, position_mlp
from domainfm.three_d.point_mae import _xavier
from timm.layers import trunc_normal_
from torch import nn


class ResidualConv(nn.Module):
    """``ConvBNReLURes1D`` (groups 1, expansion 1): ``GELU(BN(Conv(GELU(BN(Conv(x))))) + x)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.net1 = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.BatchNorm1d(dim), nn.GELU())
        self.net2 = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.BatchNorm1d(dim))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.net2(self.net1(x)) + x)


class TokenPropagation(nn.Module):
    """``PointNetFeaturePropagation``: coarse tokens ``(B, S, D2)`` at ``coarse`` centres to the ``fine`` centres
    (3 nearest, weights ``1 / (d^2 + 1e-8)`` normalised), concatenated after the fine tokens ``(B, N, D1)``."""

    def __init__(self, in_dim: int, out_dim: int, up_blocks: int = 1):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv1d(in_dim, out_dim, 1), nn.BatchNorm1d(out_dim), nn.GELU())
        self.extraction = nn.Sequential(*(ResidualConv(out_dim) for _ in range(up_blocks)))

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor, fine_tokens: torch.Tensor, coarse_tokens: torch.Tensor):
        if coarse.shape[1] == 1:
            interpolated = coarse_tokens.expand(-1, fine.shape[1], -1)
        else:
            d, idx = square_distances(fine, coarse).topk(3, dim=-1, largest=False)
            w = 1.0 / (d + 1e-8)
            w = w / w.sum(-1, keepdim=True)
            interpolated = (gather_points(coarse_tokens, idx) * w[..., None]).sum(2)
        x = torch.cat([fine_tokens, interpolated], dim=-1).transpose(1, 2)
        return self.extraction(self.fuse(x)).transpose(1, 2)


def load_guide(guide: str | nn.Module) -> nn.Module:
    """The frozen 2D model: a module, or any source :func:`~domainfm.backbones.loading.load_backbone` reads."""
    if isinstance(guide, str):
        from domainfm.backbones.loading import load_backbone
        from domainfm.errors import ConfigError

        try:
            guide = load_backbone(guide)
        except ConfigError as err:
            raise ConfigError(f"method.guide (the frozen 2D model): {err}") from err
    for p in guide.parameters():
        p.requires_grad_(False)
    return guide.eval()


class I2PMAE(Method):
    def __init__(
        self,
        backbone: HierarchicalPointEncoder,
        guide: str | nn.Module,
        mask_ratio: float = 0.8,
        mask_temperature: float = 1.0,
        decoder_dims: tuple[int, ...] | list[int] = (384, 192),
        decoder_depths: tuple[int, ...] | list[int] = (1, 1),
        decoder_up_blocks: tuple[int, ...] | list[int] = (1,),
        decoder_heads: int = 6,
        drop_path_rate: float = 0.1,
        image_size: int = 224,
        weight_3d: float = 1.0,
        weight_2d: float = 1.0,
    ):
        super().__init__()
        self.encoder = backbone
        dims, levels = backbone.dims, len(backbone.dims)
        n = len(decoder_dims)
        if not 1 <= n <= levels or list(decoder_dims) != dims[::-1][:n] or len(decoder_depths) != n:
            raise ValueError(f"decoder_dims={list(decoder_dims)} must be the top {n} encoder widths, coarse first "
                             f"({dims[::-1][:n]}), with one depth each")  # fmt: skip
        if len(decoder_up_blocks) != n - 1:
            raise ValueError(f"decoder_up_blocks needs {n - 1} value(s), one per propagation")
        self.mask_ratio, self.mask_temperature = float(mask_ratio), float(mask_temperature)
        self.image_size, self.weight_3d, self.weight_2d = int(image_size), float(weight_3d), float(weight_2d)
        self.target_level = levels - n
        self.guide = load_guide(guide)
        feat = int(self.guide.num_features)
        rates = torch.linspace(0, drop_path_rate, sum(decoder_depths)).tolist()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dims[0]))
        self.decoder, self.decoder_pos, self.token_prop = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        start = 0
        for j, (d, depth) in enumerate(zip(decoder_dims, decoder_depths)):
            stage = blocks(d, depth, decoder_heads, 4.0, drop_path_rate, rates[start : start + depth])
            stage.apply(_xavier)
            self.decoder.append(stage)
            self.decoder_pos.append(position_mlp(d, hidden=d))
            if j:
                self.token_prop.append(TokenPropagation(d + decoder_dims[j - 1], d, decoder_up_blocks[j - 1]))
            start += depth
        d, k = decoder_dims[-1], backbone.group_sizes[self.target_level]
        self.decoder_norm = nn.LayerNorm(d)
        self.head_3d = nn.Linear(d, 3 * k)  # the official Conv1d(d, 3 k, 1) on one position: the same map
        self.head_2d = nn.Linear(d, 3 * feat * k)
        trunc_normal_(self.mask_token, std=0.02)
        self.register_state_dict_post_hook(_drop_guide)
        self.register_load_state_dict_post_hook(_guide_not_missing)

    @property
    def backbone(self) -> HierarchicalPointEncoder:
        return self.encoder

    def train(self, mode: bool = True) -> I2PMAE:
        super().train(mode)
        self.guide.eval()  # frozen: no dropout / drop path in the 2D model
        return self

    @torch.no_grad()
    def guidance(self, points: torch.Tensor, levels: Levels):
        """``(saliency of the top centres (B, G), 2D feature maps (B, 3, F, h, w), projection)``."""
        images, proj = project_depth(points, self.image_size)
        saliency, features = attention_and_features(self.guide, to_model_input(images))
        b = points.shape[0]
        saliency = saliency.reshape(b, 3, 1, *saliency.shape[-2:]).float()
        features = features.reshape(b, 3, *features.shape[-3:]).float()
        top = back_project(levels.centers[-1], saliency, proj).mean(1)[..., 0]
        return top, features, proj

    def decode(self, levels: Levels, encoded, visible: list[torch.Tensor]) -> torch.Tensor:
        """The last decoder level's tokens ``(B, G, D)`` for every centre of :attr:`target_level`."""
        top = len(levels.centers) - 1
        x, _ = encoded[top]
        b, _, d = x.shape
        masked = ~visible[top]
        c = levels.centers[top]
        vis_c, mask_c = c[~masked].reshape(b, -1, 3), c[masked].reshape(b, -1, 3)
        pos = torch.cat([self.decoder_pos[0](vis_c), self.decoder_pos[0](mask_c)], dim=1)
        x = torch.cat([x, self.mask_token.expand(b, mask_c.shape[1], d)], dim=1)
        coarse = torch.cat([vis_c, mask_c], dim=1)
        for j, stage in enumerate(self.decoder):
            if j:
                level = top - j
                tokens, valid = encoded[level]
                fine = tokens.new_zeros(b, levels.centers[level].shape[1], tokens.shape[-1])
                fine[visible[level]] = tokens[valid]
                coarse_next = levels.centers[level]
                x = self.token_prop[j - 1](coarse_next, coarse, fine, x)
                pos, coarse = self.decoder_pos[j](coarse_next), coarse_next
            for block in stage:
                x = block(x + pos)
        return self.decoder_norm(x)

    def forward(self, batch: dict[str, Any], ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        points = self.encoder.check_points(batch["points"])
        levels = self.encoder.group(points)
        saliency, features, proj = self.guidance(points, levels)
        mask = guided_mask(saliency / self.mask_temperature, self.mask_ratio)
        visible = self.encoder.visible_levels(levels, ~mask)
        x = self.decode(levels, self.encoder.encode(levels, visible), visible)
        t = self.target_level
        masked = ~visible[t]
        b, g, k, _ = levels.neighborhoods[t].shape
        rec_3d = self.head_3d(x[masked]).reshape(-1, k, 3)
        loss_3d = chamfer_l2(rec_3d, levels.neighborhoods[t][masked])
        targets = back_project(levels.absolute[t].reshape(b, g * k, 3), features, proj)  # (B, 3, G k, F)
        targets = targets.permute(0, 2, 1, 3).reshape(b, g, k, -1)[~masked]  # views concatenated per neighbour
        rec_2d = self.head_2d(x[~masked]).reshape(targets.shape)
        loss_2d = F.mse_loss(rec_2d, targets)
        loss = self.weight_3d * loss_3d + self.weight_2d * loss_2d
        return {"loss": loss, "loss_3d": loss_3d.detach(), "loss_2d": loss_2d.detach()}

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def rank_inputs(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return batch.get("points")


def _drop_guide(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "guide.")]:
        del state_dict[key]


def _guide_not_missing(module: nn.Module, incompatible) -> None:
    incompatible.missing_keys[:] = [
        k for k in incompatible.missing_keys if k.split("guide.", 1)[0] not in ("", "module.")
    ]

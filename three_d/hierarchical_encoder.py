"""I2P-MAE's hierarchical point encoder as a domainfm backbone (Zhang et al., "Learning 3D Representations from 2D
Pre-trained Models via Image-to-Point Masked Autoencoders", CVPR 2023; official ``models/I2P_MAE.py`` ``H_Encoder``,
``models/modules.py`` ``Token_Embed`` / ``Group_v2``, ``cfgs/pre-training/i2p-mae.yaml``).

Levels (defaults = the official pretraining config): ``num_groups`` 512 / 256 / 64 centres, each level's centres
drawn by farthest point sampling from the level below (level 0 from the points), ``group_sizes`` 16 / 8 / 8 nearest
neighbours per centre, widths ``dims`` 96 / 192 / 384, ``depths`` 5 / 5 / 5 pre-norm blocks (6 heads at every level,
``qkv_bias=False``, MLP ratio 4), drop path rising 0 -> 0.1 over all 15 blocks. Per level::

    tokens_0 = MiniPointNet(centred neighbourhoods of 3-D points)            (3 -> 128 -> 256, max, 512 -> 512 -> 96)
    tokens_i = TokenMerge(level i-1 tokens at the neighbours' indices)     (C -> C -> C, max, 2C -> D -> D)
    x = block(x + pos_i(centres))  for each block of the level            (pos_i: Linear(3, D), GELU, Linear(D, D))

Level ``i``'s input tokens are level ``i-1``'s block outputs (not normalised); each level's output is normalised by
its own LayerNorm. With ``visible`` masks (I2P-MAE's pretraining) each level's blocks see only that level's visible
tokens, packed to the longest count in the batch with the padded keys masked out; the masked tokens keep their
token-embedding values, as the official code (``group_input_tokens[bool_vis_pos] = x_vis``). ``local_radius`` > 0
restricts attention to centres closer than the radius (``dist >= r`` blocked, as ``local_att_mask``; the official
finetuning config uses 0.24 / 0.48 / 0.96 with groups of 48 / 24 / 24; pretraining uses none). Initialisation as
``H_Encoder._init_weights``: Linear and Conv1d truncated normal (std 0.02, bias 0), LayerNorm (1, 0).

As a backbone (``forward_features``) all tokens are visible and the top level's tokens are returned with their max
as the prefix token: ``cls`` pooling = the max, the feature of the official linear-SVM evaluation
(``x_vis_list[-1].max(1)``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from domainfm.three_d.grouping import farthest_point_sample, gather_points, knn
from domainfm.three_d.point_encoder import MiniPointNet, PointBackbone, blocks, init_weights, position_mlp
from torch import nn


@dataclass
class Levels:
    """A batch cut into levels: per level ``neighborhoods`` ``(B, G, K, 3)`` (centred on their centre), the same
    neighbours in the cloud's coordinates ``absolute`` (``Group_v2``'s ``neighborhood_ori``: gathered, so exactly
    the points' coordinates), ``centers`` ``(B, G, 3)``, ``index`` ``(B, G, K)`` (the neighbours' positions among the
    points for level 0, among the previous level's centres above)."""

    neighborhoods: list[torch.Tensor]
    absolute: list[torch.Tensor]
    centers: list[torch.Tensor]
    index: list[torch.Tensor]


def group_levels(xyz: torch.Tensor, num_groups: list[int], group_sizes: list[int]) -> Levels:
    """``Group_v2`` applied level by level: FPS centres of the level below, their ``k`` nearest neighbours."""
    levels = Levels([], [], [], [])
    source = xyz
    for g, k in zip(num_groups, group_sizes):
        centers = gather_points(source, farthest_point_sample(source, g))
        index = knn(centers, source, k)
        neighbours = gather_points(source, index)
        levels.neighborhoods.append(neighbours - centers[:, :, None])
        levels.absolute.append(neighbours)
        levels.centers.append(centers)
        levels.index.append(index)
        source = centers
    return levels


def lower_visible(visible: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """I2P-MAE's multi-scale masking, one level down: a token of the level below is visible when it is a neighbour
    of a visible token of this level (``(B, G)`` visible, ``(B, G, K)`` index -> ``(B, count)``)."""
    hits = torch.where(visible[:, :, None], index, count)  # masked tokens point at an extra last column
    lower = torch.zeros(visible.shape[0], count + 1, dtype=torch.bool, device=visible.device)
    lower.scatter_(1, hits.reshape(len(hits), -1), True)
    return lower[:, :count]


def pack(x: torch.Tensor, centers: torch.Tensor, visible: torch.Tensor):
    """The visible tokens first (in their order), padded to the longest count: ``(x, centers, valid)``."""
    order = torch.sort((~visible).to(torch.uint8), dim=1, stable=True).indices
    n = int(visible.sum(1).max())
    order = order[:, :n]
    valid = torch.arange(n, device=x.device)[None] < visible.sum(1, keepdim=True)
    return gather_points(x, order), gather_points(centers, order), valid


class HierarchicalPointEncoder(PointBackbone):
    """I2P-MAE's encoder (see the module docstring); input ``(B, N, 3)`` clouds in the unit sphere."""

    domainfm_architecture = "domainfm_hierarchical_point_encoder"

    def __init__(
        self,
        num_groups: tuple[int, ...] | list[int] = (512, 256, 64),
        group_sizes: tuple[int, ...] | list[int] = (16, 8, 8),
        dims: tuple[int, ...] | list[int] = (96, 192, 384),
        depths: tuple[int, ...] | list[int] = (5, 5, 5),
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        local_radius: tuple[float, ...] | list[float] = (0.0, 0.0, 0.0),
        pointnet_widths: tuple[int, int, int] | list[int] = (128, 256, 512),
    ):
        super().__init__()
        lengths = {len(num_groups), len(group_sizes), len(dims), len(depths), len(local_radius)}
        if len(lengths) != 1:
            raise ValueError("num_groups, group_sizes, dims, depths and local_radius need one value per level")
        self.config = dict(num_groups=list(num_groups), group_sizes=list(group_sizes), dims=list(dims),
                           depths=list(depths), num_heads=num_heads, mlp_ratio=mlp_ratio,
                           local_radius=list(local_radius), pointnet_widths=list(pointnet_widths))  # fmt: skip
        self.num_groups, self.group_sizes = [int(g) for g in num_groups], [int(k) for k in group_sizes]
        self.dims, self.local_radius = [int(d) for d in dims], [float(r) for r in local_radius]
        self.embed_dim = self.num_features = self.dims[-1]
        self.pretrained_cfg: dict = {}
        self.domainfm_weights = None
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.token_embed, self.pos_embeds, self.levels, self.norms = (nn.ModuleList() for _ in range(4))
        start = 0
        for i, (d, depth) in enumerate(zip(self.dims, depths)):
            c = self.dims[i - 1]
            self.token_embed.append(
                MiniPointNet(d, tuple(pointnet_widths)) if i == 0 else MiniPointNet(d, (c, c, d), c)
            )
            self.pos_embeds.append(position_mlp(d, hidden=d))
            self.levels.append(blocks(d, depth, num_heads, mlp_ratio, drop_path_rate, rates[start : start + depth]))
            self.norms.append(nn.LayerNorm(d))
            start += depth
        self.apply(init_weights)

    def group(self, points: torch.Tensor) -> Levels:
        return group_levels(self.check_points(points), self.num_groups, self.group_sizes)

    def visible_levels(self, levels: Levels, top_visible: torch.Tensor) -> list[torch.Tensor]:
        """Every level's visible tokens from the top level's (the official multi-scale masking)."""
        visible = [top_visible]
        for i in range(len(self.dims) - 1, 0, -1):
            visible.insert(0, lower_visible(visible[0], levels.index[i], self.num_groups[i - 1]))
        return visible

    def _attention_mask(self, centers: torch.Tensor, valid: torch.Tensor | None, radius: float):
        allowed = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, N): padded keys blocked
        if radius > 0:
            near = (torch.cdist(centers, centers) < radius)[:, None]
            allowed = near if allowed is None else near & allowed
        return allowed

    def encode(self, levels: Levels, visible: list[torch.Tensor] | None = None):
        """Per level ``(tokens (B, V, D) normalised, valid (B, V) bool)``: the visible tokens packed first (all tokens
        in their order, ``valid`` all True, when ``visible`` is ``None``)."""
        out = []
        x_all = None
        for i, level in enumerate(self.levels):
            if i == 0:
                tokens = self.token_embed[0](levels.neighborhoods[0])
            else:
                tokens = self.token_embed[i](gather_points(x_all, levels.index[i]))
            centers = levels.centers[i]
            if visible is None:
                x, c, valid = tokens, centers, None
            else:
                x, c, valid = pack(tokens, centers, visible[i])
            mask = self._attention_mask(c, valid, self.local_radius[i])
            pos = self.pos_embeds[i](c)
            for block in level:
                x = block(x + pos, attn_mask=mask)
            if visible is None:
                x_all = x
                out.append((self.norms[i](x), torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)))
            else:
                x_all = tokens.clone()
                x_all[visible[i]] = x[valid]
                out.append((self.norms[i](x), valid))
        return out

    def tokens(self, points: torch.Tensor) -> torch.Tensor:
        return self.encode(self.group(points))[-1][0]

    def input_text(self) -> str:
        groups = " / ".join(f"{g} x {k}" for g, k in zip(self.num_groups, self.group_sizes))
        return f"hierarchical FPS + kNN groups {groups} (centres x neighbours per level)"


def create_hierarchical_encoder(
    name: str = "i2p_mae", weights: str | None = None, **kwargs
) -> HierarchicalPointEncoder:
    """``i2p_mae`` (the official 512 / 256 / 64 groups, 96 / 192 / 384 wide, 5 / 5 / 5 deep) or ``i2p_mae_tiny``
    (ours, for CPU: 128 / 64 / 16 groups of 16 / 8 / 8, 48 / 96 / 192 wide, 1 / 1 / 2 deep, 3 heads, mini-PointNet
    widths 32 / 64 / 128), or an export (``weights=``)."""
    if weights:
        from domainfm.backbones.loading import load_backbone

        return load_backbone(weights)
    sizes = {
        "i2p_mae": {},
        "i2p_mae_tiny": {"num_groups": (128, 64, 16), "dims": (48, 96, 192), "depths": (1, 1, 2), "num_heads": 3,
                         "pointnet_widths": (32, 64, 128)},
    }  # fmt: skip
    if name not in sizes:
        raise ValueError(f"unknown hierarchical point encoder {name!r}; choose {', '.join(sizes)}")
    return HierarchicalPointEncoder(**{**sizes[name], **kwargs})

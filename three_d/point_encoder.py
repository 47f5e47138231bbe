"""Point-MAE's point transformer as a domainfm backbone (Pang et al., ECCV 2022; official ``models/Point_MAE.py``).

A cloud ``(B, N, 3)`` is cut into ``num_group`` patches (FPS centres + the ``group_size`` nearest points, centred:
:func:`~domainfm.three_d.grouping.group_points`); a mini-PointNet embeds each patch (``Conv1d 3->128, BN, ReLU,
Conv1d 128->256``, max-pool, the pooled feature concatenated to every point, ``Conv1d 512->512, BN, ReLU, Conv1d
512->D``, max-pool); the centres' positions (``Linear 3->128, GELU, Linear 128->D``) are added to the input of
every block (``x = block(x + pos)``); pre-norm blocks with ``qkv_bias=False``, MLP ratio 4, drop path rising to
``drop_path_rate``; a final LayerNorm. Initialisation as the official ``_init_weights``: Linear and Conv1d
truncated normal (std 0.02, bias 0), LayerNorm (1, 0). Defaults are Point-MAE's (``cfgs/pretrain.yaml``: 64 groups
of 32, 384 wide, 12 deep, 6 heads, drop path 0.1).

``encode`` gives the patch tokens ``(B, G, D)`` (Point-MAE pretrains without a class token).
``forward_features`` prepends their max as the prefix token ``(B, 1 + G, D)``, so the core's poolings read it:
``cls`` = the max, ``mean`` = the mean of the patch tokens, ``both`` = ``[max | mean]``, the feature of the
ModelNet linear-SVM protocol of the follow-up papers (Point-MAE's released code has no working SVM path; its
finetuning head reads ``[learned cls | max]``: ours has no learned class token). ``forward`` is ``[max | mean]``."""

from __future__ import annotations

import torch
from domainfm.three_d.grouping import group_points
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn


class MiniPointNet(nn.Module):
    """Point-MAE's ``Encoder``: ``(B, G, K, C)`` patches -> ``(B, G, D)`` tokens; ``widths`` ``(128, 256, 512)`` are
    the official hidden widths (``C -> w0 -> w1``, max-pool, concat, ``2 w1 -> w2 -> D``). ``C = 3`` for points;
    I2P-MAE's token merging is the same network over ``C``-wide tokens with widths ``(C, C, D)``."""

    def __init__(self, embed_dim: int = 384, widths: tuple[int, int, int] = (128, 256, 512), in_chans: int = 3):
        super().__init__()
        w0, w1, w2 = (int(w) for w in widths)
        self.first_conv = nn.Sequential(
            nn.Conv1d(in_chans, w0, 1), nn.BatchNorm1d(w0), nn.ReLU(inplace=True), nn.Conv1d(w0, w1, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * w1, w2, 1), nn.BatchNorm1d(w2), nn.ReLU(inplace=True), nn.Conv1d(w2, embed_dim, 1)
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, g, k, c = patches.shape
        x = self.first_conv(patches.reshape(b * g, k, c).transpose(1, 2))  # (BG, w1, K)
        pooled = x.max(dim=2, keepdim=True).values
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, k), x], dim=1))
        return x.max(dim=2).values.reshape(b, g, -1)


def position_mlp(dim: int, hidden: int = 128) -> nn.Sequential:
    """Point-MAE's positional embedding of patch centres: ``Linear(3, 128), GELU, Linear(128, dim)`` (I2P-MAE:
    ``hidden = dim``)."""
    return nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))


def blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float,
           rates: list[float] | None = None) -> nn.ModuleList:  # fmt: skip
    """Pre-norm blocks without qkv bias, ``nn.LayerNorm`` (eps 1e-5, as Point-MAE's and I2P-MAE's blocks; timm's
    default is 1e-6, which moves Point-MAE's loss at initialisation by 1 %); drop path rising linearly to
    ``drop_path_rate`` (or the given ``rates``)."""
    rates = torch.linspace(0, drop_path_rate, depth).tolist() if rates is None else list(rates)
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio, qkv_bias=False, drop_path=r, norm_layer=nn.LayerNorm) for r in rates
    )


class PointBackbone(nn.Module):
    """What every point encoder shares: ``tokens(points)`` ``(B, G, D)`` (normalised); ``forward_features`` prepends
    their max as the prefix token (``cls`` pooling = the max, ``mean`` = the mean of the tokens, ``both`` = ``[max |
    mean]``); ``forward`` is ``[max | mean]``; the export layout and its strict read-back."""

    domainfm_architecture = ""
    num_prefix_tokens = 1  # the max over the tokens (see forward_features)

    def tokens(self, points: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def input_text(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def check_points(self, points: torch.Tensor) -> torch.Tensor:
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected a batch of point clouds (B, N, 3), got shape {tuple(points.shape)}")
        return points.float()

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(points)
        return torch.cat([tokens.max(dim=1, keepdim=True).values, tokens], dim=1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_features(points)
        return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)

    def export_config(self, preprocess: dict) -> tuple[dict, dict]:
        n = int(preprocess.get("n_points") or 1024)
        text = (
            f"N x 3 points (xyz), centred on the centroid and scaled into the unit sphere, N = {n}; {self.input_text()}"
        )
        return dict(self.config), {"input_size": [n, 3], "input_description": text}

    @classmethod
    def from_export(cls, source, saved_args: dict, pretrained_cfg: dict, state, in_chans=None, img_size=None,
                    channel_mode: str = "mean", model_args: dict | None = None) -> PointBackbone:  # fmt: skip
        """An export read back with the strict key check of every domainfm backbone."""
        from domainfm.backbones.loading import check_keys, loaded_cfg
        from domainfm.errors import ConfigError

        if in_chans not in (None, 3) or img_size is not None:
            raise ConfigError(f"backbone={source} is a point encoder: in_chans / img_size do not apply")
        model = cls(**{**saved_args, **(model_args or {})})
        missing, unexpected = model.load_state_dict(state, strict=False)
        check_keys(str(source), cls.domainfm_architecture, missing, unexpected)
        model.pretrained_cfg = loaded_cfg(pretrained_cfg, tuple(pretrained_cfg.get("input_size") or (1024, 3)), None)
        model.domainfm_weights = str(source)
        return model


class PointTransformer(PointBackbone):
    """Point-MAE's encoder (see the module docstring); input ``(B, N, 3)`` clouds in the unit sphere."""

    domainfm_architecture = "domainfm_point_transformer"

    def __init__(
        self,
        num_group: int = 64,
        group_size: int = 32,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        pointnet_widths: tuple[int, int, int] | list[int] = (128, 256, 512),
    ):
        super().__init__()
        self.config = dict(num_group=num_group, group_size=group_size, embed_dim=embed_dim, depth=depth,
                           num_heads=num_heads, mlp_ratio=mlp_ratio, pointnet_widths=list(pointnet_widths))  # fmt: skip
        self.num_group, self.group_size = int(num_group), int(group_size)
        self.embed_dim = self.num_features = int(embed_dim)
        self.pretrained_cfg: dict = {}
        self.domainfm_weights = None
        self.patch_embed = MiniPointNet(embed_dim, tuple(pointnet_widths))
        self.pos_embed = position_mlp(embed_dim)
        self.blocks = blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(init_weights)

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(neighbourhoods (B, G, K, 3) centred, centres (B, G, 3))``."""
        return group_points(self.check_points(points), self.num_group, self.group_size)

    def encode(self, patches: torch.Tensor, centers: torch.Tensor, visible: torch.Tensor | None = None):
        """Tokens ``(B, V, D)`` of the ``visible`` patches (``(B, G)`` bool, the same count per cloud; all when
        ``None``)."""
        x, pos = self.patch_embed(patches), self.pos_embed(centers)
        if visible is not None:
            b, _, d = x.shape
            x, pos = x[visible].reshape(b, -1, d), pos[visible].reshape(b, -1, d)
        for block in self.blocks:
            x = block(x + pos)
        return self.norm(x)

    def tokens(self, points: torch.Tensor) -> torch.Tensor:
        return self.encode(*self.group(points))

    def input_text(self) -> str:
        return f"{self.num_group} FPS patches of {self.group_size} points"


def init_weights(m: nn.Module) -> None:
    """Point-MAE's ``_init_weights``: truncated normal (std 0.02) for Linear / Conv1d, zero bias; LayerNorm 1 / 0."""
    if isinstance(m, (nn.Linear, nn.Conv1d)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def create_point_transformer(name: str = "point_mae", weights: str | None = None, **kwargs) -> PointTransformer:
    """``point_mae`` (Point-MAE's 384 x 12) or ``point_mae_tiny`` (ours: 192 x 4, 32 groups of 16, mini-PointNet
    widths 32 / 64 / 128, for CPU), or an export (``weights=``)."""
    if weights:
        from domainfm.backbones.loading import load_backbone

        return load_backbone(weights)
    sizes = {"point_mae": {}, "point_mae_tiny": {"embed_dim": 192, "depth": 4, "num_heads": 3, "num_group": 32,
                                                 "group_size": 16, "pointnet_widths": (32, 64, 128)}}  # fmt: skip
    if name not in sizes:
        raise ValueError(f"unknown point transformer {name!r}; choose {', '.join(sizes)}")
    return PointTransformer(**{**sizes[name], **kwargs})

"""3D Vision Transformer for volumes and voxel grids (``C x D x H x W``): Conv3d patch embedding, fixed 3D sin-cos
position embedding (computed for whatever grid the input gives), timm transformer blocks. It exposes the attributes
that :class:`~domainfm.backbones.masked_vit.MaskedViT` uses, so MAE-style masking works unchanged."""

from __future__ import annotations

import torch
from domainfm.backbones.pos_embed import sincos_pos_embed
from timm.models.vision_transformer import Block
from torch import nn


def _triple(x: int | tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    return (x, x, x) if isinstance(x, int) else (int(x[0]), int(x[1]), int(x[2]))


class PatchEmbed3D(nn.Module):
    """Non-overlapping ``p_d x p_h x p_w`` patches -> tokens; output ``(B, d, h, w, D)`` (channels last)."""

    def __init__(self, img_size=96, patch_size=16, in_chans: int = 1, embed_dim: int = 192):
        super().__init__()
        self.img_size, self.patch_size = _triple(img_size), _triple(patch_size)
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected a volume batch (B, C, D, H, W), got shape {tuple(x.shape)}")
        if any(s % p for s, p in zip(x.shape[2:], self.patch_size)):
            raise ValueError(f"volume size {tuple(x.shape[2:])} is not divisible by patch size {self.patch_size}")
        return self.proj(x).permute(0, 2, 3, 4, 1)


class VisionTransformer3D(nn.Module):
    """ViT over 3D patches with a cls token and fixed sin-cos positions (as MAE's decoder, extended to 3 axes)."""

    domainfm_architecture = "domainfm_vit3d"  # exported by domainfm.engine.export, read by load_backbone

    def __init__(
        self,
        img_size=96,
        patch_size=16,
        in_chans: int = 1,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1
        self.pretrained_cfg: dict = {}
        self.patch_embed = PatchEmbed3D(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.normal_(self.cls_token, std=0.02)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i]) for i in range(depth)]
        )
        self.norm_pre, self.patch_drop = nn.Identity(), nn.Identity()
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.grad_checkpointing = False
        self.domainfm_weights = None  # freshly initialised (see create_vit)
        self._pos: dict[tuple[int, ...], torch.Tensor] = {}
        self.config = dict(
            img_size=list(self.patch_embed.img_size),
            patch_size=list(self.patch_embed.patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def export_config(self, preprocess: dict) -> tuple[dict, dict]:
        """``(constructor arguments, pretrained_cfg)`` of the export: ``input_size [C, D, H, W]``, mean / std."""
        in_chans = int(preprocess.get("in_chans", self.patch_embed.proj.in_channels))
        size = preprocess.get("img_size", self.patch_embed.img_size)
        size = [int(size)] * 3 if isinstance(size, int) else [int(v) for v in size]
        mean, std = [float(v) for v in preprocess["mean"]], [float(v) for v in preprocess["std"]]
        cfg = {"input_size": [in_chans, *size], "interpolation": "trilinear", "crop_pct": 1.0, "mean": mean, "std": std}
        return {**self.config, "img_size": size, "in_chans": in_chans}, cfg

    @classmethod
    def from_export(cls, source, saved_args: dict, pretrained_cfg: dict, state, in_chans=None, img_size=None,
                    channel_mode: str = "mean", model_args: dict | None = None) -> VisionTransformer3D:  # fmt: skip
        """An export read back: the same strict key check and channel adaptation as a 2D ViT; positions are fixed
        sin-cos computed for any grid, so a new ``img_size`` needs no resampling."""
        from domainfm.backbones.loading import adapt_channels, check_keys, loaded_cfg

        src_chans = int(state["patch_embed.proj.weight"].shape[1])
        args = {**saved_args, **(model_args or {}), "in_chans": in_chans or src_chans}
        if img_size is not None:
            args["img_size"] = img_size
        model = cls(**args)
        state["patch_embed.proj.weight"] = adapt_channels(
            state["patch_embed.proj.weight"], args["in_chans"], channel_mode
        )
        missing, unexpected = model.load_state_dict(state, strict=False)
        check_keys(str(source), cls.domainfm_architecture, missing, unexpected)
        model.pretrained_cfg = loaded_cfg(
            pretrained_cfg, (args["in_chans"], *model.patch_embed.img_size), args["in_chans"]
        )
        model.domainfm_weights = str(source)
        return model

    def pos_embed(self, grid: tuple[int, ...], device, dtype) -> torch.Tensor:
        if grid not in self._pos:
            self._pos[grid] = sincos_pos_embed(grid, self.embed_dim)
        return self._pos[grid].to(device=device, dtype=dtype)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d, h, w, D)`` -> ``(B, 1 + N, D)`` with positions added and the cls token prepended."""
        grid = tuple(x.shape[1:-1])
        x = x.reshape(x.shape[0], -1, x.shape[-1]) + self.pos_embed(grid, x.device, x.dtype)
        return torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(x))
        return self.norm(self.blocks(x))

    def forward_intermediates(self, x: torch.Tensor, indices: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(final normed tokens, [block outputs at indices, (B, D, d, h, w)])`` as timm's ViT
        ``forward_intermediates`` (``norm=False``, prefix tokens dropped): what UNETR's skips take."""
        x = self.patch_embed(x)
        grid = tuple(x.shape[1:-1])
        x = self._pos_embed(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in indices:
                patches = x[:, self.num_prefix_tokens :]
                outs.append(patches.transpose(1, 2).reshape(x.shape[0], -1, *grid))
        return self.norm(x), outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature: the cls token."""
        return self.forward_features(x)[:, 0]


def vit3d_tiny(**kwargs) -> VisionTransformer3D:
    return VisionTransformer3D(**{"embed_dim": 192, "depth": 12, "num_heads": 3, **kwargs})


def vit3d_small(**kwargs) -> VisionTransformer3D:
    return VisionTransformer3D(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **kwargs})


def vit3d_base(**kwargs) -> VisionTransformer3D:
    return VisionTransformer3D(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs})


_SIZES = {"vit3d_tiny": vit3d_tiny, "vit3d_small": vit3d_small, "vit3d_base": vit3d_base}


def create_vit3d(
    name: str = "vit3d_small",
    img_size=None,
    patch_size=16,
    in_chans: int = 1,
    drop_path_rate: float = 0.0,
    weights: str | None = None,
    **kwargs,
) -> VisionTransformer3D:
    """A 3D ViT by size name (``vit3d_tiny`` / ``vit3d_small`` / ``vit3d_base``; ``depth`` etc. override), fresh
    (``img_size`` default 96) or from ``weights``: a run or export folder written by domainfm (``img_size``
    default: the weights'; channels adapted; positions are computed for any grid)."""
    if name not in _SIZES:
        raise ValueError(f"backbone {name!r}: 3D ViTs are {', '.join(_SIZES)}")
    if weights:
        from domainfm.backbones.loading import load_backbone

        extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        return load_backbone(weights, in_chans=in_chans, img_size=img_size, **extra, **kwargs)
    return _SIZES[name](
        img_size=img_size or 96, patch_size=patch_size, in_chans=in_chans, drop_path_rate=drop_path_rate, **kwargs
    )

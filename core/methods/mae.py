"""MAE (He et al. 2022): encode visible patches, decode all positions with a light transformer,
reconstruct masked pixels (see ``domainfm.objectives.mae``). Masks come from the batch
(``batch["mask"]``, built per sample by the data pipeline) or are drawn here when absent.
"""

from __future__ import annotations

import math

import torch
from domainfm.backbones.init import mae_init_
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.backbones.pos_embed import sincos_pos_embed
from domainfm.data.masking import RandomPatchMask
from domainfm.methods.base import Method, StepContext
from domainfm.objectives.mae import mae_loss, patchify
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn


class MAEDecoder(nn.Module):
    """Project encoder tokens, fill masked positions with a mask token, add fixed sin-cos positions,
    run ``depth`` transformer blocks and predict ``p*p*C`` pixels per patch."""

    def __init__(self, in_dim: int, patch_pixels: int, dim: int = 128, depth: int = 2, heads: int = 4):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)  # models_mae.py: partial(nn.LayerNorm, eps=1e-6)
        self.pred = nn.Linear(dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    def pos_embed(self, grid: tuple[int, ...], device) -> torch.Tensor:
        key = tuple(grid)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_pos_embed(key, self.proj.out_features)
        return self._pos_cache[key].to(device)

    def forward(self, encoded, num_patches: int) -> torch.Tensor:
        x = self.proj(encoded.tokens)
        prefix, vis = x[:, : encoded.num_prefix], x[:, encoded.num_prefix :]
        B, D = x.shape[0], x.shape[-1]
        full = self.mask_token.to(x.dtype).expand(B, num_patches, D).clone()
        if encoded.patch_ids is None:
            full = vis
        else:
            rows = torch.arange(B, device=x.device)[:, None].expand_as(encoded.patch_ids)
            full[rows[encoded.valid], encoded.patch_ids[encoded.valid]] = vis[encoded.valid]
        full = full + self.pos_embed(encoded.grid, x.device).to(x.dtype)
        x = torch.cat([prefix, full], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, encoded.num_prefix :]


class MAE(Method):
    """MAE on 2D images (timm ViT) or volumes (:class:`~domainfm.backbones.vit3d.VisionTransformer3D`).

    ``init="mae"`` applies MAE's initialisation (:func:`~domainfm.backbones.init.mae_init_`: Xavier, fixed sin-cos
    positions) to the decoder and to a freshly created backbone; weights loaded with ``create_vit(weights=...)``
    are kept. ``init="keep"`` leaves timm's initialisation."""

    rank_pooling = "mean"  # the class token is not what MIM trains

    def __init__(
        self,
        backbone: nn.Module,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        init: str = "mae",
    ):
        super().__init__()
        if init not in ("mae", "keep"):
            raise ValueError(f"init={init!r}: use mae (MAE's initialisation) or keep (the backbone's weights as given)")
        self.encoder = MaskedViT(backbone)
        self.patch_size = tuple(backbone.patch_embed.patch_size)
        self.in_chans = backbone.patch_embed.proj.in_channels
        self.decoder = MAEDecoder(
            backbone.embed_dim, math.prod(self.patch_size) * self.in_chans, decoder_dim, decoder_depth, decoder_heads
        )
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        if init == "mae":
            mae_init_(self.decoder)
            if getattr(backbone, "domainfm_weights", "") is None:  # fresh from create_vit / the 3D ViT, not loaded
                mae_init_(backbone)

    @property
    def backbone(self) -> VisionTransformer:
        return self.encoder.vit

    def grid(self, images: torch.Tensor) -> tuple[int, ...]:
        return tuple(s // p for s, p in zip(images.shape[2:], self.patch_size))

    def forward(self, batch, ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        images = batch["image"]
        grid = self.grid(images)
        mask = batch.get("mask")
        if mask is None:
            gen = RandomPatchMask(grid, self.mask_ratio)
            mask = torch.stack([gen() for _ in range(images.shape[0])]).to(images.device)
        encoded = self.encoder(images, mask, mode="drop")
        pred = self.decoder(encoded, math.prod(grid))
        loss = mae_loss(pred, patchify(images, self.patch_size), mask, self.norm_pix_loss)
        return {"loss": loss}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted patches ``(B, N, prod(p) * C)`` (in normalised-patch units when ``norm_pix_loss``)."""
        return self.decoder(self.encoder(images, mask, mode="drop"), math.prod(self.grid(images)))

    def report(self, batch, out_dir, preprocess) -> list:
        from domainfm.reports.reconstructions import mae_reconstruction_figure

        n = min(6, batch["image"].shape[0])
        mask = batch.get("mask")
        if mask is None:  # masks drawn in forward (volumes): a fixed draw for the figure
            gen = RandomPatchMask(self.grid(batch["image"]), self.mask_ratio)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                mask = torch.stack([gen() for _ in range(n)])
        path = mae_reconstruction_figure(
            self,
            batch["image"][:n],
            mask[:n],
            preprocess["mean"],
            preprocess["std"],
            out_dir / "reconstructions.png",
            channels=preprocess.get("display_channels"),
            stretch=bool(preprocess.get("display_stretch", False)),
        )
        return [path]

"""FSFM (Wang et al., "FSFM: A Generalizable Face Security Foundation Model via Self-Supervised Facial
Representation Learning", CVPR 2025): MAE with CRFR-P masks + an EMA-teacher instance-discrimination branch.

Per face, with CRFR-P image mask ``m`` and facial-region mask ``R`` (:mod:`domainfm.face_security.crfrp`, drawn
from the batch's LaPa maps):

- ``L_rec`` = per-patch MSE of the pixel decoder's prediction against norm-pix targets, over the patches of ``m``;
- ``L_sfr`` = the same over the patches of ``R``;
- ``L_cl = -1/2 cos(pred(proj(mean(rep_dec(enc(x_visible))))), sg(proj_t(mean(rep_dec_t(enc_t(x))))))``: the online
  branch sees the visible tokens, the teacher (EMA of encoder + representation decoder + projector) the whole
  face; projections L2-normalised;
- ``L = L_rec + 0.007 L_sfr + 0.1 L_cl``.

Defaults from the official code (``fsfm-3c/models_fsfm.py``, ``engine_pretrain.py``, ``util/loss_contrastive.py``):
pixel decoder 512-d x 8 blocks (16 heads) on the encoder's tokens; representation decoder = the encoder width x 2
blocks (16 heads), mask tokens at the masked positions; projector and predictor ``Linear(d, 4096) -> LayerNorm ->
ReLU -> Linear(4096, 256)``; the predictor is online only; EMA momentum cosine 0.996 -> 1 per step; SimSiam-style
one-directional negative cosine with factor 1/2.

Deviations: the representation decoder gets fixed 2D sin-cos positions (the official online copy's are never
initialised and stay zero, which EMA then copies to the teacher); its tokens are mean-pooled over the patch
positions (the official mean also includes the class token: 196 vs 197 tokens); the pixel and representation
decoders have their own mask tokens (the official shares one); the CRFR-P region is drawn per face, not per
batch. Masks come from ``batch["mask"]``/``batch["sfr_mask"]`` when the pipeline made them, else from
``batch["parsing"]`` here, with a generator seeded by the step and the process rank (a resumed run draws the
same masks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from domainfm.backbones.init import mae_init_
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.common.distributed import rank
from domainfm.common.schedules import CosineSchedule
from domainfm.face_security.crfrp import crfrp_masks, region_patches
from domainfm.methods.base import Method, StepContext
from domainfm.methods.ema import ema_update, make_teacher
from domainfm.methods.mae import MAEDecoder
from domainfm.objectives.contrastive import negative_cosine
from domainfm.objectives.mae import mae_loss, patchify
from timm.models.vision_transformer import VisionTransformer
from torch import nn


def byol_mlp(in_dim: int, hidden: int = 4096, out_dim: int = 256) -> nn.Sequential:
    """FSFM's ``BYOLMLP``: Linear -> LayerNorm -> ReLU -> Linear (its BatchNorm is commented out)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )


class _Online(nn.Module):
    """What the teacher copies: encoder, representation decoder, projector."""

    def __init__(self, backbone: VisionTransformer, rep_depth: int, rep_heads: int, hidden: int, dim: int):
        super().__init__()
        self.encoder = MaskedViT(backbone)
        width = backbone.embed_dim
        self.rep_decoder = MAEDecoder(width, width, width, rep_depth, rep_heads)
        self.projector = byol_mlp(width, hidden, dim)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None, num_patches: int):
        """``(projection (B, dim), encoder tokens)``."""
        encoded = self.encoder(images, mask, mode="drop")
        return self.projector(self.rep_decoder(encoded, num_patches).mean(1)), encoded


class FSFM(Method):
    """FSFM on faces with LaPa parsing maps (see the module docstring)."""

    rank_pooling = "mean"

    def __init__(
        self,
        backbone: VisionTransformer,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        rep_decoder_depth: int = 2,
        rep_decoder_heads: int = 16,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        norm_pix_loss: bool = True,
        sfr_weight: float = 0.007,
        cl_weight: float = 0.1,
        momentum: tuple[float, float] = (0.996, 1.0),
        seed: int = 0,
    ):
        super().__init__()
        self.patch_size = int(backbone.patch_embed.patch_size[0])
        in_chans = backbone.patch_embed.proj.in_channels
        self.online = _Online(backbone, rep_decoder_depth, rep_decoder_heads, proj_hidden, proj_dim)
        self.decoder = MAEDecoder(
            backbone.embed_dim, self.patch_size**2 * in_chans, decoder_dim, decoder_depth, decoder_heads
        )
        self.predictor = byol_mlp(proj_dim, proj_hidden, proj_dim)
        mae_init_(self.decoder)
        mae_init_(self.online.rep_decoder)
        if getattr(backbone, "domainfm_weights", "") is None:
            mae_init_(backbone)
        self.teacher = make_teacher(self.online)
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.sfr_weight, self.cl_weight, self.seed = sfr_weight, cl_weight, seed
        self.momentum = CosineSchedule(momentum[0], momentum[1])

    @property
    def backbone(self) -> VisionTransformer:
        return self.online.encoder.vit

    def masks(self, batch, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, sfr_mask)`` from the batch, or CRFR-P over ``batch["parsing"]`` (seeded by step and rank)."""
        if "mask" in batch and "sfr_mask" in batch:
            return batch["mask"].bool(), batch["sfr_mask"].bool()
        if "parsing" not in batch:
            raise KeyError(
                "FSFM needs batch['parsing'] (LaPa maps: data.dataset=FaceParsingDataset) or mask + sfr_mask"
            )
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 4099 + rank())
        mask, sfr, _ = crfrp_masks(region_patches(batch["parsing"].cpu(), self.patch_size), self.mask_ratio, gen)
        device = batch["image"].device
        return mask.to(device), sfr.to(device)

    def forward(self, batch, ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        images = batch["image"]
        n = math.prod(s // self.patch_size for s in images.shape[2:])
        mask, sfr = self.masks(batch, ctx.step if ctx else 0)
        z_online, encoded = self.online(images, mask, n)
        pred = self.decoder(encoded, n)
        target = patchify(images, self.patch_size)
        l_rec = mae_loss(pred, target, mask, self.norm_pix_loss)
        l_sfr = mae_loss(pred, target, sfr, self.norm_pix_loss)
        p = F.normalize(self.predictor(z_online), dim=-1)
        with torch.no_grad():
            z = F.normalize(self.teacher(images, None, n)[0], dim=-1)
        l_cl = 0.5 * negative_cosine(p, z)
        loss = l_rec + self.sfr_weight * l_sfr + self.cl_weight * l_cl
        return {"loss": loss, "loss_rec": l_rec.detach(), "loss_sfr": l_sfr.detach(), "loss_cl": l_cl.detach()}

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        ema_update(self.teacher, self.online, self.momentum(ctx.step, ctx.max_steps))

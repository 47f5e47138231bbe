"""One masking wrapper over a timm ViT for MAE-style (drop masked tokens) and SimMIM/iBOT-style
(replace masked tokens by a learned mask token) encoders.

Masks are inputs: a bool tensor ``(B, N)`` over the patch grid, ``True`` = masked. Samples may have
different numbers of visible tokens; they are packed left and padded, and padded keys are excluded from
attention, so every sample sees exactly its own visible tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class EncodedTokens:
    """Encoder output. ``tokens`` is ``(B, P + L, D)`` with ``P`` prefix (cls/register) tokens first.

    For ``drop`` mode, ``patch_ids`` ``(B, L)`` gives each kept token's index in the patch grid and
    ``valid`` ``(B, L)`` marks real (non-padding) tokens; for ``replace``/no mask, ``L = N`` in grid order.
    """

    tokens: torch.Tensor
    num_prefix: int
    grid: tuple[int, ...]
    patch_ids: torch.Tensor | None = None
    valid: torch.Tensor | None = None

    @property
    def prefix(self) -> torch.Tensor:
        return self.tokens[:, : self.num_prefix]

    @property
    def patches(self) -> torch.Tensor:
        return self.tokens[:, self.num_prefix :]

    @property
    def cls(self) -> torch.Tensor:
        return self.tokens[:, 0]


class MaskedViT(nn.Module):
    """Wrap a timm ``VisionTransformer``; the wrapped model stays the exportable backbone."""

    def __init__(self, vit: VisionTransformer, mask_token: bool = False):
        super().__init__()
        self.vit = vit
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.embed_dim)) if mask_token else None
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch-embed and add position embeddings; returns ``(B, P + N, D)`` and the grid."""
        x = self.vit.patch_embed(images)
        # channels-last grids: (B, H, W, D) for dynamic-size 2D ViTs, (B, d, h, w, D) for the 3D ViT
        grid = tuple(x.shape[1:-1]) if x.ndim >= 4 else tuple(self.vit.patch_embed.grid_size)
        return self.vit._pos_embed(x), grid

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None, mode: str = "drop") -> EncodedTokens:
        """Encode ``images`` (B, C, H, W); ``mask`` (B, N) bool, True = masked.

        ``mode="drop"`` keeps only visible tokens (MAE, FSFM); ``mode="replace"`` substitutes the learned
        mask token at masked positions before the position embedding is added (SimMIM, iBOT).
        """
        P = self.vit.num_prefix_tokens
        if mask is not None and mode == "replace":
            return self._forward_replace(images, mask)
        x, grid = self.embed(images)
        patch_ids = valid = None
        attn_mask = None
        if mask is not None:
            if mode != "drop":
                raise ValueError(f"mode must be 'drop' or 'replace', got {mode!r}")
            x, patch_ids, valid = _keep_visible(x, mask.to(torch.bool), P)
            if not bool(valid.all()):
                keys = torch.cat([valid.new_ones(valid.shape[0], P), valid], dim=1)
                attn_mask = keys[:, None, None, :]
        x = self._blocks(self.vit.norm_pre(self.vit.patch_drop(x)), attn_mask)
        return EncodedTokens(self.vit.norm(x), P, grid, patch_ids, valid)

    def _forward_replace(self, images: torch.Tensor, mask: torch.Tensor) -> EncodedTokens:
        x, grid = self._embed_replace(images, mask)
        x = self._blocks(self.vit.norm_pre(x), None)
        return EncodedTokens(self.vit.norm(x), self.vit.num_prefix_tokens, grid)

    def _embed_replace(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Patch-embed, put the mask token at masked positions, then add position embeddings."""
        if self.mask_token is None:
            raise ValueError("mode='replace' needs MaskedViT(mask_token=True)")
        vit = self.vit
        x = vit.patch_embed(images)
        grid = tuple(x.shape[1:-1]) if x.ndim >= 4 else tuple(vit.patch_embed.grid_size)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        w = mask.reshape(flat.shape[0], -1, 1).to(flat.dtype)
        flat = flat * (1 - w) + self.mask_token.to(flat.dtype) * w
        return vit._pos_embed(flat.reshape(x.shape)), grid

    def cls_and_patches(
        self, images: torch.Tensor, patches: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The class token ``(B, D)`` and the patch tokens at ``patches`` ``(B, N)`` bool ``(n, D)``, as
        ``out.cls`` and ``out.patches[patches]`` of ``out = forward(images, mask, "replace")`` (``mask`` = None:
        no mask), for objectives that read a few tokens per image (DINO's class token, iBOT's masked patches).

        Exact, and cheaper: the last block's MLP and the final norm run only on the tokens read (its attention still
        sees every token), two thirds of the last block's work on the others. Drop-path draws one decision per
        sample with the same generator calls as the full forward, so a seeded run gives the same outputs."""
        vit = self.vit
        x, _ = self._embed_replace(images, mask) if mask is not None else self.embed(images)
        P, B = vit.num_prefix_tokens, x.shape[0]
        if patches is not None and patches.shape != (B, x.shape[1] - P):
            raise ValueError(f"patches {tuple(patches.shape)} do not match the patch grid ({B}, {x.shape[1] - P})")

        def read(t: torch.Tensor) -> torch.Tensor:  # class tokens, then the selected patches (row-major)
            return torch.cat([t[:, 0], t[:, P:][patches]]) if patches is not None else t[:, 0]

        *head, last = vit.blocks
        x = self._blocks(vit.norm_pre(x), None, head)
        if type(last) is not Block:  # not timm's pre-norm block: run it whole
            rows = vit.norm(read(last(x)))
        else:
            x = x + last.drop_path1(last.ls1(last.attn(last.norm1(x))))
            rows = read(x)
            update = last.ls2(last.mlp(last.norm2(rows)))
            p = float(getattr(last.drop_path2, "drop_prob", 0.0))
            if p > 0.0 and last.drop_path2.training:  # one decision per sample, as timm's DropPath on (B, N, D)
                keep = x.new_empty(B).bernoulli_(1 - p)
                if getattr(last.drop_path2, "scale_by_keep", True) and p < 1.0:
                    keep = keep / (1 - p)
                sample = torch.arange(B, device=x.device)
                owner = torch.cat([sample, patches.nonzero()[:, 0]]) if patches is not None else sample
                update = update * keep[owner, None]
            rows = vit.norm(rows + update)
        if patches is None:
            return rows, None
        return rows[:B], rows[B:]

    def _blocks(self, x: torch.Tensor, attn_mask: torch.Tensor | None, blocks=None) -> torch.Tensor:
        use_ckpt = self.vit.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.vit.blocks if blocks is None else blocks:
            if use_ckpt:
                x = checkpoint(blk, x, attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask=attn_mask)
        return x


def _keep_visible(x: torch.Tensor, mask: torch.Tensor, num_prefix: int):
    """Gather the visible patch tokens of each sample (grid order), packed left and padded."""
    prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
    if mask.shape != patches.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the patch grid {tuple(patches.shape[:2])}")
    n_keep = (~mask).sum(1)
    length = int(n_keep.max())
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :length]
    kept = torch.gather(patches, 1, order[..., None].expand(-1, -1, patches.shape[-1]))
    valid = torch.arange(length, device=x.device)[None] < n_keep[:, None]
    return torch.cat([prefix, kept], dim=1), order, valid

"""MADELEINE (Jaume et al., ECCV 2024, "Multistain Pretraining for Slide Representation Learning in Pathology"):
a slide encoder trained by aligning each H&E slide with the other stains (IHC) of the same tissue.

Architecture (``madeleine/models/Model.py``, ``abmil.py`` at commit 419287d):

- input: patch features ``(N, d_in)`` (CONCH 512-d in the paper) concatenated with a learned 32-d stain embedding;
- pre-attention MLP, three blocks ``Linear -> LayerNorm -> GELU -> Dropout(0.1)``: ``d_in + 32 -> H -> H -> H x
  heads`` (``H`` = 512, 4 heads), shared by all stains;
- ``heads`` gated-attention branches (Ilse et al.): head ``i`` sees features ``e * heads + i`` of the MLP output
  (``rearrange('b t (e c) -> b t e c')``), scores ``w_c^T (Dropout(tanh(W_a h)) * Dropout(sigmoid(W_b h)))``
  (dropout 0.25, hidden 512), softmax over the patches, ``z_i = sum_t A_ti h_ti``;
- slide embedding ``Linear(H x heads -> H)`` of ``[z_e,i]`` flattened e-major; local tokens
  ``Linear(H x heads -> 128)`` of every patch's MLP output (what the Graph-OT loss aligns).

Loss per step (``madeleine/utils/trainer.py``, ``loss.py``), for every stain ``s`` other than H&E with at least two
slides in the batch having it: the symmetric InfoNCE ``0.5 CE(cos(he, s) / tau) + 0.5 CE(cos(s, he) / tau)`` between
the L2-normalised H&E and stain-``s`` slide embeddings of those slides (negatives: the other slides of the batch; tau
0.001), plus ``local_weight`` (1.0) times Graph-OT between their H&E and stain-``s`` tokens (256 tokens drawn per
slide; :mod:`domainfm.pathology.graph_ot`) summed over the slides; the stains' losses are summed.

Deviations from the official code (each fixes a bug there): stain codes follow the batch layout (the official
``stain_indicator`` is modality-major for a batch-major flattening, so slides get other stains' codes when the batch
holds more than one slide); a missing stain is not encoded (the official code encodes zero rows and discards them);
H&E slide embeddings at inference use the H&E stain code (the official ``encode_he`` skips it and fails with stain
encoding on); Graph-OT thresholds and token draws are per slide (see :mod:`~domainfm.pathology.graph_ot`). Defaults
from the official scripts: AdamW lr 1e-4 (the official ``--wd 1e-4`` is never passed to AdamW, which then decays by
0.01), batch 65, 120 epochs with 5 of warmup, bf16 autocast, 2048 patches per slide (drawn with replacement when a
slide has fewer).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from domainfm.errors import DataError
from domainfm.methods.base import Method, StepContext
from domainfm.pathology.graph_ot import graph_ot, subsample_tokens
from torch import nn


class GatedAttentionHeads(nn.Module):
    """``heads`` independent gated-attention scorers, one per slice of the features: ``(B, N, H, heads)`` ->
    attention ``(B, N, heads)`` (softmax over ``N``; ``mask`` ``(B, N)`` True = patch)."""

    def __init__(self, dim: int, hidden: int, heads: int, dropout: float = 0.25):
        super().__init__()
        self.w_a = nn.Parameter(torch.empty(heads, dim, hidden))
        self.b_a = nn.Parameter(torch.zeros(heads, hidden))
        self.w_b = nn.Parameter(torch.empty(heads, dim, hidden))
        self.b_b = nn.Parameter(torch.zeros(heads, hidden))
        self.w_c = nn.Parameter(torch.empty(heads, hidden))
        self.b_c = nn.Parameter(torch.zeros(heads))
        self.drop = nn.Dropout(dropout)
        for w, fan_in in ((self.w_a, dim), (self.w_b, dim), (self.w_c, hidden)):  # nn.Linear's default init
            nn.init.uniform_(w, -(fan_in**-0.5), fan_in**-0.5)
        for b, fan_in in ((self.b_a, dim), (self.b_b, dim), (self.b_c, hidden)):
            nn.init.uniform_(b, -(fan_in**-0.5), fan_in**-0.5)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.drop(torch.tanh(torch.einsum("bnec,ceh->bnch", h, self.w_a) + self.b_a))
        g = self.drop(torch.sigmoid(torch.einsum("bnec,ceh->bnch", h, self.w_b) + self.b_b))
        scores = torch.einsum("bnch,ch->bnc", a * g, self.w_c) + self.b_c
        if mask is not None:
            scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
        return scores.softmax(dim=1)


class MadeleineSlideEncoder(nn.Module):
    """Multi-head gated ABMIL slide encoder with a stain embedding.

    ``encode(features (B, N, d_in), stain (B,) long, mask=None) -> (slide (B, E), tokens (B, N, token_dim),
    attention (B, N, heads))``. As a domainfm backbone: ``forward_features(features)`` gives the H&E slide
    embedding followed by every patch's projection ``(B, 1 + N, E)`` (``cls`` pooling = the attention-pooled slide
    embedding, ``mean`` = the same projection under uniform attention); ``forward`` the slide embedding."""

    domainfm_architecture = "domainfm_madeleine"
    num_prefix_tokens = 1

    def __init__(
        self,
        in_dim: int = 512,
        stains: list[str] | tuple[str, ...] = ("HE", "HER2", "PGR", "KI67", "ER"),
        hidden: int = 512,
        heads: int = 4,
        attn_hidden: int = 512,
        stain_dim: int = 32,
        token_dim: int = 128,
        dropout: float = 0.1,
        attn_dropout: float = 0.25,
    ):
        super().__init__()
        self.config = dict(
            in_dim=int(in_dim), stains=list(stains), hidden=int(hidden), heads=int(heads),
            attn_hidden=int(attn_hidden), stain_dim=int(stain_dim), token_dim=int(token_dim), dropout=float(dropout),
            attn_dropout=float(attn_dropout),
        )  # fmt: skip
        self.stains, self.heads, self.hidden = list(stains), int(heads), int(hidden)
        self.stain_embed = nn.Embedding(len(self.stains), stain_dim) if stain_dim else None
        dims = [in_dim + stain_dim, hidden, hidden, hidden * heads]
        layers: list[nn.Module] = []
        for d0, d1 in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d0, d1), nn.LayerNorm(d1), nn.GELU(), nn.Dropout(dropout)]
        self.pre_attn = nn.Sequential(*layers)
        self.attention = GatedAttentionHeads(hidden, attn_hidden, heads, attn_dropout)
        self.projector = nn.Linear(hidden * heads, hidden)
        self.token_projector = nn.Linear(hidden * heads, token_dim)
        self.num_features = self.embed_dim = int(hidden)
        self.pretrained_cfg: dict[str, Any] = {}

    def embed_patches(self, features: torch.Tensor, stain: torch.Tensor | int) -> torch.Tensor:
        """The pre-attention MLP output ``(B, N, H x heads)``."""
        x = features.float()
        if self.stain_embed is not None:
            stain = torch.as_tensor(stain, device=x.device).long().expand(x.shape[0])
            code = self.stain_embed(stain)[:, None, :].expand(-1, x.shape[1], -1)
            x = torch.cat([x, code], dim=-1)
        return self.pre_attn(x)

    def _attend(self, h: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled (B, H x heads) e-major as the official flatten, attention (B, N, heads))``."""
        b, n, _ = h.shape
        split = h.view(b, n, self.hidden, self.heads)  # head i: features e * heads + i
        attention = self.attention(split, mask)
        return torch.einsum("bnec,bnc->bec", split, attention).reshape(b, -1), attention

    def encode(
        self, features: torch.Tensor, stain: torch.Tensor | int = 0, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.embed_patches(features, stain)
        pooled, attention = self._attend(h, mask)
        return self.projector(pooled), self.token_projector(h), attention

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed_patches(features, 0)
        pooled, _ = self._attend(h, mask)
        return torch.cat([self.projector(pooled)[:, None], self.projector(h)], dim=1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(features, 0, mask)[0]

    def export_config(self, preprocess: dict) -> tuple[dict, dict]:
        text = (f"a bag of N x {self.config['in_dim']} patch features of one H&E slide (the patch encoder named "
                f"under domainfm); stains seen in pretraining: {', '.join(self.stains)}")  # fmt: skip
        return dict(self.config), {"input_size": [0, self.config["in_dim"]], "input_description": text}

    @classmethod
    def from_export(cls, source, saved_args: dict, pretrained_cfg: dict, state, in_chans=None, img_size=None,
                    channel_mode: str = "mean", model_args: dict | None = None) -> MadeleineSlideEncoder:  # fmt: skip
        from domainfm.backbones.loading import check_keys, loaded_cfg
        from domainfm.errors import ConfigError

        if in_chans is not None or img_size is not None:
            raise ConfigError(f"backbone={source} is a slide encoder: in_chans / img_size do not apply")
        model = cls(**{**saved_args, **(model_args or {})})
        missing, unexpected = model.load_state_dict(state, strict=False)
        check_keys(str(source), cls.domainfm_architecture, missing, unexpected)
        model.pretrained_cfg = loaded_cfg(pretrained_cfg, tuple(pretrained_cfg.get("input_size") or ()), None)
        model.domainfm_weights = str(source)
        return model


def create_slide_encoder(weights: str | None = None, **kwargs) -> MadeleineSlideEncoder:
    """A new :class:`MadeleineSlideEncoder` (``kwargs``), or an export read back (``weights=``)."""
    if weights:
        from domainfm.backbones.loading import load_backbone

        return load_backbone(weights)
    return MadeleineSlideEncoder(**kwargs)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, symmetric: bool = True) -> torch.Tensor:
    """InfoNCE on cosine logits between paired rows of ``a`` and ``b`` ``(n, d)`` (positives on the diagonal)."""
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    labels = torch.arange(len(a), device=a.device)
    loss = F.cross_entropy(logits, labels)
    return 0.5 * loss + 0.5 * F.cross_entropy(logits.T, labels) if symmetric else loss


class Madeleine(Method):
    """The MADELEINE objective on batches of :class:`~domainfm.pathology.multistain.MultistainBags`
    (``features (B, S, N, d)``, ``present (B, S)`` bool; stain 0 is H&E)."""

    def __init__(
        self,
        backbone: MadeleineSlideEncoder,
        temperature: float = 0.001,
        symmetric: bool = True,
        local_weight: float = 1.0,
        local_tokens: int | None = 256,
    ):
        super().__init__()
        self.backbone = backbone
        self.temperature, self.symmetric = float(temperature), bool(symmetric)
        self.local_weight = float(local_weight)
        self.local_tokens = None if local_tokens in (None, 0) else int(local_tokens)

    def forward(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        feats, present = batch["features"], batch["present"].bool()
        b, s = present.shape
        if feats.shape[-1] != self.backbone.config["in_dim"] or s != len(self.backbone.stains):
            raise DataError(
                f"the bags hold {s} stains of {feats.shape[-1]}-d patch features; the slide encoder was built for "
                f"{len(self.backbone.stains)} of {self.backbone.config['in_dim']}-d: set backbone.in_dim="
                f"{feats.shape[-1]} (and data.stains to the bags' stains)"
            )
        he = present[:, 0]
        # encode each (slide, stain) that exists, once; stain codes follow the batch layout
        rows = present.nonzero()
        slide, tokens, _ = self.backbone.encode(feats[rows[:, 0], rows[:, 1]], rows[:, 1])
        at = torch.full((b, s), -1, dtype=torch.long, device=feats.device)
        at[rows[:, 0], rows[:, 1]] = torch.arange(len(rows), device=feats.device)
        total = slide.new_zeros(())
        logs: dict[str, torch.Tensor] = {}
        g = torch.Generator().manual_seed(int(ctx.step))  # token draws: reproducible after a resume
        for k in range(1, s):
            pair = he & present[:, k]
            if int(pair.sum()) < 2:  # InfoNCE needs a negative (the official rule)
                continue
            i_he, i_k = at[pair, 0], at[pair, k]
            glob = info_nce(slide[i_he], slide[i_k], self.temperature, self.symmetric)
            loss = glob
            if self.local_weight:
                x, y = subsample_tokens(tokens[i_he], tokens[i_k], self.local_tokens, g)
                local = graph_ot(x, y).sum()
                loss = loss + self.local_weight * local
                logs[f"got_{self.backbone.stains[k]}"] = local.detach()
            logs[f"nce_{self.backbone.stains[k]}"] = glob.detach()
            total = total + loss
        if not logs:  # no stain pair in this batch: a zero loss that still touches every parameter
            total = slide.sum() * 0.0 + tokens.sum() * 0.0
        return {"loss": total, **logs}

    def rank_inputs(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return batch["features"][:, 0]  # the H&E bags (MADELEINE ranks the H&E slide embeddings)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(images, 0)[0]

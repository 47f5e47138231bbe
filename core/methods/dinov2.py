"""DINOv2-style self-distillation (Oquab et al. 2023): DINO loss on cls tokens over multi-crop views, iBOT loss on
masked patch tokens of the global views, KoLeo on the student's global cls tokens, EMA teacher.

Faithful to ``dinov2/train/ssl_meta_arch.py``: the teacher sees the unmasked global crops, its cls outputs are swapped
between the two global views (view A teaches view B's student and vice versa); local crops are taught by both global
views; the loss terms are normalised by ``n_global * (n_global - 1) + n_global * n_local``; KoLeo (weight 0.1) is
applied per global view on the backbone cls token; the iBOT head is shared with the DINO head by default; the
teacher's momentum follows a cosine 0.992 -> 1 and its temperature warms up linearly 0.04 -> 0.07 over the first
30 % of training (30 of 100 epochs in DINOv2); the last layer of the DINO head is frozen for the first 1 % of steps.
The exported backbone is the teacher's, as for published DINOv2/UNI weights.

Optimisation as ``dinov2/utils/param_groups.py`` and ``dinov2/train/train.py``: layer-wise lr decay
``lr_scale = layer_decay ** (L + 1 - layer)`` (0.9; layer 0 = patch embedding, tokens and positions, ``i + 1`` =
block ``i``, heads and the final norm 1) and the patch embedding's lr times ``patch_embed_lr_mult`` (0.2); weight
decay on everything but biases, norms and LayerScale gammas (class/register/mask tokens and position embeddings *are*
decayed there, unlike MAE); gradients clipped per module (student backbone, DINO head, iBOT head each to
``trainer.clip_grad`` = 3.0) rather than over one global norm.
"""

from __future__ import annotations

import torch
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.backbones.vit import layer_id
from domainfm.common.schedules import CosineSchedule, LinearWarmupSchedule
from domainfm.methods.base import Method, StepContext
from domainfm.methods.ema import ema_update, make_teacher
from domainfm.methods.heads import DINOHead
from domainfm.objectives.dino import DINOLoss
from domainfm.objectives.ibot import IBOTPatchLoss
from domainfm.objectives.koleo import koleo_loss
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class _Branch(nn.Module):
    """Backbone (with mask token) + DINO head (+ optional separate iBOT head)."""

    def __init__(self, backbone: VisionTransformer, head: DINOHead, ibot_head: DINOHead | None):
        super().__init__()
        self.encoder = MaskedViT(backbone, mask_token=True)
        self.head = head
        self.ibot_head = ibot_head


def _project(
    branch: _Branch, cls_parts: list[torch.Tensor], patches: torch.Tensor | None
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Head outputs for the class tokens (one tensor per part) and the masked patch tokens. With a shared iBOT head
    the head runs once over all of them, as ``ssl_meta_arch.py`` does (one weight-norm and one matmul per layer)."""
    sizes = [x.shape[0] for x in cls_parts]
    if patches is not None and branch.ibot_head is None:
        *cls_out, patch_out = branch.head(torch.cat([*cls_parts, patches])).split([*sizes, patches.shape[0]])
        return cls_out, patch_out
    cls_out = list(branch.head(torch.cat(cls_parts)).split(sizes))
    return cls_out, branch.ibot_head(patches) if patches is not None else None


class DINOv2(Method):
    def __init__(
        self,
        backbone: VisionTransformer,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        separate_ibot_head: bool = False,
        ibot_out_dim: int | None = None,
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        centering: str = "centering",
        student_temp: float = 0.1,
        teacher_temp: tuple[float, float] = (0.04, 0.07),
        teacher_temp_warmup: float = 0.3,
        momentum: tuple[float, float] = (0.992, 1.0),
        freeze_last_layer: float = 0.01,
        layer_decay: float = 0.9,
        patch_embed_lr_mult: float = 0.2,
    ):
        super().__init__()
        head = DINOHead(backbone.embed_dim, out_dim, hidden_dim, bottleneck_dim, head_layers)
        ibot_dim = ibot_out_dim or out_dim
        ibot_head = (
            DINOHead(backbone.embed_dim, ibot_dim, hidden_dim, bottleneck_dim, head_layers)
            if separate_ibot_head
            else None
        )
        self.student = _Branch(backbone, head, ibot_head)
        self.teacher = make_teacher(self.student)
        self.dino_loss = DINOLoss(out_dim, student_temp, centering=centering)
        self.ibot_loss = IBOTPatchLoss(ibot_dim if separate_ibot_head else out_dim, student_temp, centering=centering)
        self.weights = {"dino": dino_weight, "ibot": ibot_weight, "koleo": koleo_weight}
        self.teacher_temp = LinearWarmupSchedule(teacher_temp[0], teacher_temp[1], teacher_temp_warmup)
        self.momentum = CosineSchedule(momentum[0], momentum[1])
        self.freeze_last_layer = freeze_last_layer
        self.layer_decay, self.patch_embed_lr_mult = layer_decay, patch_embed_lr_mult

    @property
    def backbone(self) -> VisionTransformer:
        return self.teacher.encoder.vit

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def optim_groups(self) -> list[dict]:
        """DINOv2's parameter groups (see the module docstring), one per (lr scale, weight-decay scale)."""
        n_blocks = len(self.student.encoder.vit.blocks)
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            lr_scale = 1.0
            if name.startswith("encoder."):
                sub = name.removeprefix("encoder.").removeprefix("vit.")
                lr_scale = self.layer_decay ** (n_blocks + 1 - layer_id(sub, n_blocks))
                if "patch_embed" in sub:
                    lr_scale *= self.patch_embed_lr_mult
            wd_scale = 0.0 if name.endswith(".bias") or "norm" in name or "gamma" in name else 1.0
            groups.setdefault((lr_scale, wd_scale), []).append(p)
        return [{"params": ps, "lr_scale": lr, "wd_scale": wd} for (lr, wd), ps in sorted(groups.items())]

    def grad_clip_groups(self) -> list[list[nn.Parameter]]:
        """``for v in student.values(): v.clip_grad_norm_(clip)``: backbone (with the mask token), DINO head, iBOT
        head."""
        modules = [self.student.encoder, self.student.head, self.student.ibot_head]
        return [[p for p in m.parameters() if p.requires_grad] for m in modules if m is not None]

    def forward(self, batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        globals_ = batch["global_crops"]
        locals_ = batch.get("local_crops") or []
        n_g, n_l = len(globals_), len(locals_)
        if n_g != 2:
            raise ValueError(f"DINOv2 needs exactly 2 global crops, got {n_g}")
        B = globals_[0].shape[0]
        g = torch.cat(globals_)  # (2B, C, H, W): all first views, then all second views
        masks = batch.get("masks")
        masks = torch.cat([masks[:, 0], masks[:, 1]]) if masks is not None else None
        temp = self.teacher_temp(ctx.step, ctx.max_steps)

        use_ibot = masks is not None and self.weights["ibot"] > 0

        read = masks if use_ibot else None  # the tokens the losses read: class tokens and iBOT's masked patches
        with torch.no_grad():
            t_cls, t_patches = self.teacher.encoder.cls_and_patches(g, read)
            t_cls = torch.cat([t_cls[B:], t_cls[:B]])  # swap views
            (t_cls_logits,), t_patch = _project(self.teacher, [t_cls], t_patches)
            t_probs = self.dino_loss.teacher_probs(t_cls_logits, temp).chunk(2)
            if use_ibot:
                t_patch_probs = self.ibot_loss.teacher_probs(t_patch, temp)

        s_cls, s_patches = self.student.encoder.cls_and_patches(g, read, masks)
        cls_parts = [s_cls] + ([self.student.encoder.cls_and_patches(torch.cat(locals_))[0]] if n_l else [])
        s_cls_parts, s_patch = _project(self.student, cls_parts, s_patches)
        n_terms = n_g * (n_g - 1) + n_g * n_l
        losses: dict[str, torch.Tensor] = {}
        # global: student view A vs teacher view B (the swap above), as one mean over 2B rows, times 2
        dino_global = self.dino_loss([s_cls_parts[0]], [torch.cat(t_probs)]) * 2 / n_terms
        total = self.weights["dino"] * dino_global
        losses["dino_global"] = dino_global.detach()
        if n_l:
            s_local = s_cls_parts[1].chunk(n_l)
            dino_local = self.dino_loss(list(s_local), list(t_probs)) / n_terms  # both global views teach
            total = total + self.weights["dino"] * dino_local
            losses["dino_local"] = dino_local.detach()
        if self.weights["koleo"] > 0:
            koleo = sum(koleo_loss(c) for c in s_cls.chunk(2))
            total = total + self.weights["koleo"] * koleo
            losses["koleo"] = koleo.detach()
        if use_ibot:
            ibot = self.ibot_loss(s_patch, t_patch_probs, masks)
            total = total + self.weights["ibot"] * ibot
            losses["ibot"] = ibot.detach()
        losses["teacher_temp"] = torch.tensor(temp)
        return {"loss": total, **losses}

    @torch.no_grad()
    def before_optimizer_step(self, ctx: StepContext) -> None:
        """DINO's ``cancel_gradients_last_layer``: no update of the prototypes early in training."""
        if ctx.step < self.freeze_last_layer * ctx.max_steps:
            for head in (self.student.head, self.student.ibot_head):
                for p in head.last_layer.parameters() if head is not None else []:
                    p.grad = None

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        ema_update(self.teacher, self.student, self.momentum(ctx.step, ctx.max_steps))

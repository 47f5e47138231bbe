"""CLIP-style image-text pretraining (Radford et al. 2021) with a pluggable text tower; SigLIP loss optional
(Zhai et al. 2023). The image tower is the exported ViT (cls token after the final norm) + a linear projection, as
open_clip's ViT (``ln_post`` on the class token, then ``proj``).

:class:`CLIPSelfDistill` adds a DINO self-distillation between global and local crops of the same image to the
CLIP loss (RS-M-CLIP, Silva et al. 2024, "Multilingual Vision-Language Pre-training for the Remote Sensing Domain",
arXiv 2410.23370; the same construction as SILC, Naeem et al. 2023)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.common.schedules import CosineSchedule, LinearWarmupSchedule
from domainfm.methods.base import Method, StepContext
from domainfm.methods.clip_towers import hf_text_tower, load_open_clip_state, open_clip_text_tower, read_state_dict
from domainfm.methods.ema import ema_update, make_teacher
from domainfm.methods.heads import DINOHead
from domainfm.objectives.clip import LogitScale
from domainfm.objectives.dino import DINOLoss
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["CLIP", "CLIPSelfDistill", "hf_text_tower", "open_clip_text_tower"]

TEXT_DIR = "text_tower"  # the export's sub-folder with the text tower, the projections and the tokenizer


class CLIP(Method):
    """``weights``: an open_clip checkpoint (``open_clip_pytorch_model.bin`` / ``.safetensors``) of the same
    architecture to start from (see :func:`~domainfm.methods.clip_towers.load_open_clip_state`)."""

    def __init__(
        self,
        backbone: VisionTransformer,
        text_tower: nn.Module,
        embed_dim: int = 256,
        loss: str = "clip",
        weights: str | None = None,
    ):
        super().__init__()
        self.encoder = MaskedViT(backbone)
        self.image_proj = nn.Linear(backbone.embed_dim, embed_dim, bias=False)
        self.text_tower = text_tower
        self.logits = LogitScale(loss)
        if weights:
            state = read_state_dict(weights)
            load_open_clip_state(backbone, self.image_proj, text_tower, self.logits.logit_scale, state)

    @property
    def backbone(self) -> VisionTransformer:
        return self.encoder.vit

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.encoder(images).cls)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_tower(tokens)

    def clip_terms(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = self.logits(self.encode_image(images), self.encode_text(text))
        return {"loss": loss, "logit_scale": self.logits.logit_scale.detach().exp()}

    def forward(self, batch, ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        return self.clip_terms(batch["image"], batch["text"])

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        """Clamp the temperature parameter as open_clip does (the logged ``logit_scale`` is the clamped value)."""
        self.logits.clamp_()

    def export_files(self, directory: Path, config: dict[str, Any]) -> None:
        """``text_tower/`` next to the exported image backbone: ``weights.safetensors`` (text tower, image
        projection, logit scale), ``tower.json`` (how to rebuild the tower and tokenise), the tokenizer's files when
        it is a local folder — so zero-shot and retrieval need nothing but the export."""
        from safetensors.torch import save_file

        out = Path(directory) / TEXT_DIR
        out.mkdir(parents=True, exist_ok=True)
        state = {f"text_tower.{k}": v for k, v in self.text_tower.state_dict().items()}
        state |= {
            "image_proj.weight": self.image_proj.weight,
            **{f"logits.{k}": v for k, v in self.logits.state_dict().items()},
        }
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / "weights.safetensors"))
        tower = dict((config.get("method") or {}).get("text_tower") or {})
        if hasattr(self.text_tower, "hf_config_dict"):
            tower["config"] = self.text_tower.hf_config_dict  # inline: no folder outside the export is needed
        dataset = (config.get("data") or {}).get("dataset") or {}
        tokenizer = str(dataset.get("tokenizer", "ViT-B-32"))
        if Path(tokenizer).is_dir():
            shutil.copytree(tokenizer, out / "tokenizer", dirs_exist_ok=True)
            tokenizer = "tokenizer"
        spec = {
            "text_tower": tower,
            "embed_dim": self.image_proj.out_features,
            "loss": self.logits.kind,
            "tokenizer": tokenizer,
            "context_length": int(dataset.get("context_length", 77)),
        }
        (out / "tower.json").write_text(json.dumps(spec, indent=2))


class CLIPSelfDistill(CLIP):
    """CLIP loss plus DINO self-distillation of the image tower (RS-M-CLIP; see the module docstring).

    ``L = L_clip(image tower(global crop 1), text) + distill_weight * L_dino``. ``L_dino`` is DINO's multi-crop
    loss (Caron et al. 2021, ``main_dino.py`` ``DINOLoss``): an EMA teacher (image tower + DINO head) sees the
    ``n_global`` global crops, the student (the CLIP image tower + its own DINO head) sees all crops; for every teacher
    view ``t`` and every student view ``s != t``: ``H(softmax((g_t - c) / tau_t), log_softmax(g_s / tau_s))``, batch
    mean, averaged over the pairs; centre ``c`` updated with momentum 0.9.

    RS-M-CLIP's paper does not give its crop counts, temperatures, head sizes or loss weight (no reachable text
    does); the defaults are DINO's (``main_dino.py`` argparse: out_dim 65536, 3-layer head, hidden 2048,
    bottleneck 256, student temperature 0.1, teacher 0.04 warming up to 0.04 — i.e. constant, as
    ``warmup_teacher_temp_epochs=0`` —, teacher momentum 0.996 -> 1 cosine, 2 global crops at scale (0.4, 1), 8
    local crops of 96 px at (0.05, 0.4), last layer frozen for the first epoch) and ``distill_weight = 1`` (ours).
    The CLIP term uses the first global crop (ours). The exported backbone is the *student* image tower: it is the
    one aligned with the text tower."""

    def __init__(
        self,
        backbone: VisionTransformer,
        text_tower: nn.Module,
        embed_dim: int = 512,
        loss: str = "clip",
        weights: str | None = None,
        distill_weight: float = 1.0,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        student_temp: float = 0.1,
        teacher_temp: tuple[float, float] = (0.04, 0.04),
        teacher_temp_warmup: float = 0.0,
        momentum: tuple[float, float] = (0.996, 1.0),
        freeze_last_layer: float = 0.0,
    ):
        super().__init__(backbone, text_tower, embed_dim, loss, weights)
        self.head = DINOHead(backbone.embed_dim, out_dim, hidden_dim, bottleneck_dim, head_layers)
        teacher = nn.ModuleDict({"encoder": self.encoder, "head": self.head})
        self.teacher = make_teacher(teacher)
        self.dino_loss = DINOLoss(out_dim, student_temp)
        self.distill_weight = distill_weight
        self.teacher_temp = LinearWarmupSchedule(teacher_temp[0], teacher_temp[1], teacher_temp_warmup)
        self.momentum = CosineSchedule(momentum[0], momentum[1])
        self.freeze_last_layer = freeze_last_layer

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        globals_, locals_ = batch["global_crops"], batch.get("local_crops") or []
        n_g, n_l, B = len(globals_), len(locals_), globals_[0].shape[0]
        if self.distill_weight == 0:  # the CLIP-only ablation: same views, no teacher
            out = self.clip_terms(globals_[0], batch["text"])
            return {**out, "clip": out["loss"].detach()}
        g = torch.cat(globals_)
        temp = self.teacher_temp(ctx.step, ctx.max_steps)
        with torch.no_grad():
            t_probs = self.dino_loss.teacher_probs(self.teacher.head(self.teacher.encoder(g).cls), temp).chunk(n_g)
        s_cls_global = self.encoder(g).cls
        s_parts = [s_cls_global] + ([self.encoder(torch.cat(locals_)).cls] if n_l else [])
        s_logits = self.head(torch.cat(s_parts)).chunk(n_g + n_l)  # one head pass over all crops
        total, pairs = s_logits[0].new_zeros((), dtype=torch.float32), 0
        for t, probs in enumerate(t_probs):
            for s, logits in enumerate(s_logits):
                if s != t:
                    total = total + self.dino_loss([logits], [probs])
                    pairs += 1
        dino = total / max(pairs, 1)
        clip = self.logits(self.image_proj(s_cls_global[:B]), self.encode_text(batch["text"]))
        return {
            "loss": clip + self.distill_weight * dino,
            "clip": clip.detach(),
            "dino": dino.detach(),
            "logit_scale": self.logits.logit_scale.detach().exp(),
            "teacher_temp": torch.tensor(temp),
        }

    @torch.no_grad()
    def before_optimizer_step(self, ctx: StepContext) -> None:
        """DINO's ``cancel_gradients_last_layer``."""
        if ctx.step < self.freeze_last_layer * ctx.max_steps:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        super().after_step(ctx)
        momentum = self.momentum(ctx.step, ctx.max_steps)
        ema_update(self.teacher.encoder, self.encoder, momentum)
        ema_update(self.teacher.head, self.head, momentum)


class ClipText(nn.Module):
    """The text side of an exported CLIP run: text tower, image projection, logit scale and tokenizer."""

    def __init__(self, text_tower: nn.Module, image_proj: nn.Linear, logits: LogitScale, tokenizer):
        super().__init__()
        self.text_tower, self.image_proj, self.logits = text_tower, image_proj, logits
        self.tokenizer = tokenizer

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings ``(n, embed_dim)``."""
        device = self.image_proj.weight.device
        out = [
            self.text_tower(self.tokenizer(texts[i : i + batch_size]).to(device))
            for i in range(0, len(texts), batch_size)
        ]
        return nn.functional.normalize(torch.cat(out).float(), dim=-1)

    @torch.no_grad()
    def project_images(self, cls_features: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings from the backbone's (post-norm) class-token features."""
        w = self.image_proj.weight
        return nn.functional.normalize(self.image_proj(cls_features.to(w.device, w.dtype)).float(), dim=-1)


def clip_export_dir(source: str | Path) -> Path:
    """The export folder holding ``text_tower/`` for a run or export folder; an error naming the fix otherwise."""
    path = Path(str(source))
    for candidate in (path, path / "export"):
        if (candidate / TEXT_DIR / "tower.json").exists():
            return candidate
    raise ValueError(
        f"{source} holds no CLIP text tower ({TEXT_DIR}/tower.json): zero-shot and retrieval need the export of a "
        "CLIP run (e.g. recipe=core/clip_vit_tiny or remote_sensing/rs_m_clip)"
    )


def load_clip_text(source: str | Path) -> ClipText:
    """Rebuild the text side of a CLIP export (:meth:`CLIP.export_files`) offline."""
    from domainfm.data.captions import make_tokenizer
    from hydra.utils import instantiate
    from safetensors.torch import load_file

    folder = clip_export_dir(source) / TEXT_DIR
    spec = json.loads((folder / "tower.json").read_text())
    tower = instantiate(spec["text_tower"])
    state = load_file(str(folder / "weights.safetensors"))
    tower.load_state_dict({k.removeprefix("text_tower."): v for k, v in state.items() if k.startswith("text_tower.")})
    image_proj = nn.Linear(state["image_proj.weight"].shape[1], state["image_proj.weight"].shape[0], bias=False)
    image_proj.load_state_dict({"weight": state["image_proj.weight"]})
    logits = LogitScale(spec.get("loss", "clip"))
    logits.load_state_dict({k.removeprefix("logits."): v for k, v in state.items() if k.startswith("logits.")})
    tokenizer = spec["tokenizer"]
    if (folder / tokenizer).is_dir():
        tokenizer = str(folder / tokenizer)
    return ClipText(tower, image_proj, logits, make_tokenizer(tokenizer, int(spec["context_length"]))).eval()

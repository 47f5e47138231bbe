"""Supervised finetuning of a ViT backbone with a linear head, through the engine.

Recipe after MAE / BEiT finetuning (He et al. 2022, ``main_finetune.py`` + ``util/lr_decay.py``): AdamW,
layer-wise learning-rate decay (the patch embedding and tokens are layer 0, block ``i`` is layer ``i + 1``, the
final norm and the head are layer ``L + 1``; a parameter of layer ``l`` gets ``decay ** (L + 1 - l)`` times the
learning rate; default 0.75), no weight decay on norms, biases, tokens and position embeddings, stochastic depth
rising linearly to ``drop_path`` (default 0.1), head weights ~ N(0, 2e-5). ``train_blocks=n`` trains only the
last ``n`` blocks, the final norm and the head (``null``: everything). ``balanced=true`` draws every class equally
often. Training views: random resized crop (scale 0.5-1) + horizontal flip, with the weights' mean/std;
evaluation views: resize + centre crop. The checkpoint that scores best on the validation split
(``trainer.monitor``, default balanced accuracy) is the one tested; the test split is never looked at before.
Optional (DeiT / MAE finetuning, timm's implementations): ``mixup`` / ``cutmix`` alphas (timm ``Mixup``, per batch,
``mix_prob``, ``switch_prob``; soft-target cross-entropy, label smoothing inside the mix; an odd batch is not mixed)
and ``erase`` (timm ``RandomErasing``, per-pixel normal noise, one region, on the normalised view).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from domainfm.backbones.tokens import forward_tokens, is_vit
from domainfm.backbones.vit import layer_id
from domainfm.data.transforms import ImageTransform, RandomView
from domainfm.engine.optim import param_groups
from domainfm.engine.runtime import autocast, resolve_workers
from domainfm.engine.trainer import RunSummary, TrainerConfig
from domainfm.errors import ConfigError
from domainfm.evaluation.datasets import ImageList, LabeledSet
from domainfm.evaluation.features import Preprocess, pool_tokens
from domainfm.evaluation.training import class_balance_weights, fit_best, validation_scores
from domainfm.methods.base import Method, StepContext
from torch import nn
from torch.utils.data import DataLoader, Dataset

MakeSet = Callable[[LabeledSet, Callable | None], Dataset]


def image_sets(channels: int | None) -> MakeSet:
    """``make_set`` for image files: the split's files read with ``channels`` channels, mapped by ``view``."""
    return lambda subset, view: ImageList.of(subset, channels, view)


def set_drop_path(backbone: nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly from 0 to ``rate`` over the blocks (timm's rule)."""
    from timm.layers import DropPath

    blocks = list(backbone.blocks)
    for rate_i, block in zip(np.linspace(0.0, rate, len(blocks)), blocks):
        for attr in ("drop_path1", "drop_path2"):
            if hasattr(block, attr):
                setattr(block, attr, DropPath(float(rate_i)) if rate_i > 0 else nn.Identity())


class Classifier(Method):
    """``backbone`` -> pooled tokens (``cls``, ``mean`` or ``both``) -> linear ``head``; cross-entropy loss."""

    def __init__(
        self,
        backbone: nn.Module,
        n_classes: int,
        pooling: str = "cls",
        layer_decay: float = 0.75,
        train_blocks: int | None = None,
        drop_path: float = 0.1,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
    ):
        super().__init__()
        self.backbone = backbone
        self.pooling, self.layer_decay, self.label_smoothing = pooling, layer_decay, label_smoothing
        self.mix = None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup

            self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mix_prob, switch_prob=switch_prob,
                             label_smoothing=label_smoothing, num_classes=n_classes)  # fmt: skip
        dim = backbone.num_features * (2 if pooling == "both" else 1)
        self.head = nn.Linear(dim, n_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)
        if not is_vit(backbone):  # a CNN (timm ResNet): one lr for the whole backbone, no stochastic depth
            if train_blocks is not None:
                raise ConfigError("finetune.train_blocks freezes ViT blocks; this backbone is a CNN: leave it null")
            drop_path, self.layer_decay = 0.0, 1.0
        if drop_path:
            set_drop_path(backbone, drop_path)
        self.num_blocks = len(backbone.blocks) if is_vit(backbone) else 0
        if train_blocks is not None:
            freeze_blocks(backbone, train_blocks)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        tokens, prefix = forward_tokens(self.backbone, images)
        return self.head(pool_tokens(tokens, prefix, self.pooling))

    def forward(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["label"]
        if self.mix is not None and self.training and len(images) % 2 == 0:
            if images.ndim != 4:
                raise ConfigError("finetune.mixup / finetune.cutmix mix images (B, C, H, W); set them to 0 here")
            images, soft = self.mix(images, labels)  # NumPy's RNG: saved and restored by the engine's checkpoints
            logits = self.logits(images).float()
            return {"loss": torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()}
        logits = self.logits(images)
        return {"loss": F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)}

    def optim_groups(self) -> list[dict]:
        return layer_decay_groups(self, "backbone.", self.num_blocks, self.layer_decay)


class ErasedView:
    """``view`` then timm's ``RandomErasing`` (probability ``p``, mode ``pixel``, one region) on its ``(C, H, W)``."""

    def __init__(self, view: Callable[[torch.Tensor], torch.Tensor], p: float):
        from timm.data.random_erasing import RandomErasing

        self.view, self.erase = view, RandomErasing(probability=p, mode="pixel", max_count=1, device="cpu")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = self.view(image)
        if x.ndim != 3:
            raise ConfigError(f"finetune.erase erases image regions (C, H, W); this view gives {tuple(x.shape)}")
        return self.erase(x)


def freeze_blocks(backbone: nn.Module, train_blocks: int) -> None:
    """Train only the last ``train_blocks`` blocks of a ViT and its final norm: earlier blocks, the patch
    embedding, tokens and positions get ``requires_grad=False`` (0: every block frozen)."""
    n = len(backbone.blocks)
    if not 0 <= train_blocks <= n:
        raise ConfigError(f"finetune.train_blocks={train_blocks}; the backbone has {n} blocks (use 0..{n} or null)")
    first = n - train_blocks + 1  # first trainable layer id
    for name, p in backbone.named_parameters():
        p.requires_grad_(layer_id(name, n) >= first)


def layer_decay_groups(method: Method, prefix: str, num_blocks: int, decay: float) -> list[dict]:
    """The engine's decay / no-decay groups of ``method``, split by layer with ``lr_scale = decay ** (L + 1 -
    layer)``: parameters under ``prefix`` (the ViT) by :func:`~domainfm.backbones.vit.layer_id`, everything else
    (heads, decoders) at the top layer ``L + 1``."""
    top = num_blocks + 1
    layer = {
        id(p): layer_id(n.removeprefix(prefix), num_blocks) if n.startswith(prefix) else top
        for n, p in method.named_parameters()
    }
    groups = []
    for group in param_groups(method, method.no_weight_decay()):
        by_layer: dict[int, list[nn.Parameter]] = defaultdict(list)
        for p in group["params"]:
            by_layer[layer[id(p)]].append(p)
        for lid, params in sorted(by_layer.items()):
            scale = decay ** (top - lid)
            groups.append({"params": params, "wd_scale": group["wd_scale"], "lr_scale": scale, "layer": lid})
    return groups


@torch.no_grad()
def predict_images(
    method: Classifier, dataset: Dataset, batch_size: int = 64, num_workers: int | str = 0, precision: str = "fp32"
) -> np.ndarray:
    """Class probabilities of every sample of ``dataset`` (in order), in eval mode."""
    was_training = method.training
    method.eval()
    device = next(method.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=resolve_workers(num_workers, device))
    out = []
    with autocast(device, precision):
        for batch in loader:
            out.append(method.logits(batch["image"].to(device)).float().softmax(-1).cpu().numpy())
    method.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, method.head.out_features))


def finetune(
    backbone: nn.Module,
    preprocess: Preprocess,
    data: LabeledSet,
    run_dir,
    cfg: TrainerConfig,
    channels: int | None = None,
    pooling: str = "cls",
    layer_decay: float = 0.75,
    train_blocks: int | None = None,
    drop_path: float = 0.1,
    label_smoothing: float = 0.0,
    balanced: bool = False,
    crop_scale: Sequence[float] = (0.5, 1.0),
    hflip: float = 0.5,
    vflip: float = 0.0,
    mixup: float | None = 0.0,
    cutmix: float | None = 0.0,
    mix_prob: float = 1.0,
    switch_prob: float = 0.5,
    erase: float | None = 0.0,
    make_set: MakeSet | None = None,
    train_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[Classifier, RunSummary, int]:
    """Finetune on ``data``'s train split, validating on its val split; returns the classifier with the best
    validation state loaded, the run summary and the best step.

    ``make_set(subset, view)`` gives the dataset of a split (default: image files, :class:`ImageList`);
    ``train_view`` the training augmentation (default: random resized crop + flips with the weights' mean/std).
    A domain passes its own (chips, volumes, ...)."""
    n_classes = len(data.classes)
    train, val = data.select("train"), data.select("val")
    channels = channels or preprocess.in_chans
    make_set = make_set or image_sets(channels)
    torch.manual_seed(cfg.seed)
    method = Classifier(backbone, n_classes, pooling, layer_decay, train_blocks, drop_path, label_smoothing,
                        float(mixup or 0), float(cutmix or 0), mix_prob, switch_prob)  # fmt: skip
    view = train_view or RandomView(
        preprocess.size, preprocess.mean, preprocess.std, scale=crop_scale, hflip=hflip, vflip=vflip
    )
    if erase:
        view = ErasedView(view, float(erase))
    val_set = make_set(val, preprocess.view())

    def validate(m: Classifier) -> dict[str, float]:
        return validation_scores(val.labels, predict_images(m, val_set, cfg.batch_size, cfg.num_workers))

    weights = class_balance_weights(train.labels, n_classes) if balanced else None
    summary, best = fit_best(
        method,
        make_set(train, None),
        run_dir,
        cfg,
        validate,
        transform=ImageTransform(view),
        sample_weights=weights,
        desc="finetune",
    )
    return method, summary, best

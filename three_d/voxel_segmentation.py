"""Semantic voxel labelling by finetuning a grid encoder: NeRF-MAE's own downstream protocol
(``nerf_rpn/run_voxel_semantics.py``, ``SwinTransformer_VoxelSemantics_Pretrained``, ``train_voxel_semantics.sh``),
on a domainfm 3D ViT (the NeRF-MAE export) instead of their Swin-S.

Head (the official ``semantic_decoder``): per upsampling stage ``Conv3d 3^3 -> InstanceNorm3d (no affine) ->
LeakyReLU 0.2 -> Upsample x2 (nearest)``, then ``Conv3d 3^3`` to the classes. The official Swin leaves 1/32 of the
resolution and has 5 stages of widths 512 / 256 / 128 / 64 / 32; a ViT with ``patch = 2^L`` keeps its last ``L``
(4^3 patches: 64 / 32).

Loss: labels are per-voxel class ids, 0 = empty / unlabeled; as the official ``forward_loss`` and ``output_metrics``
only voxels with a label > 0 are trained on and scored, with class-weighted cross-entropy (their run is tagged
``weightedce``; their weights come from a per-dataset file, ours are the inverse class frequency over the training
scenes, ``class_weights=balanced``, or ``none``). The official ``masked_cross_entropy`` zeroes the logits and targets
of unlabeled voxels instead of dropping them, so they add a constant (log K, weighted) to its mean and enlarge the
denominator; ours ignores them: the same gradient direction, a batch-dependent scale apart.

Official optimisation: AdamW lr 3e-4, weight decay 1e-3 (on every parameter; here, as everywhere in domainfm, not on
norms and biases), one-cycle schedule (here warm-up + cosine), gradient clipping 0.1, batch 8, no augmentation
(flip / rotate probabilities 0 in the script); ``augment`` offers NeRF-MAE's pretraining turns / flips. Metrics
(mIoU, mAcc, allAcc) and CIs as :mod:`domainfm.three_d.voxel_probe`.

Deviations: the encoder is the ViT it was pretrained as (patch tokens reshaped to their grid; the official reads the
Swin's last stage); the checkpoint is chosen on validation scenes' mIoU (the official keeps the last ones)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from domainfm.errors import DataError
from domainfm.evaluation.finetune import layer_decay_groups, set_drop_path
from domainfm.methods.base import Method, StepContext
from domainfm.three_d.nerf_mae import fit_grid, grid_input, pad_grid, read_grid, turn_and_flip
from domainfm.three_d.voxel_probe import LabeledGrid, confusion, fitted_labels
from torch import nn
from torch.utils.data import Dataset


def head_widths(patch: int) -> list[int]:
    """The official decoder's last ``log2(patch)`` stage widths (…, 128, 64, 32)."""
    stages = math.log2(patch)
    if stages != int(stages) or stages < 1:
        raise ValueError(f"the semantic voxel head needs a power-of-two patch size, got {patch}")
    return [32 * 2 ** (int(stages) - 1 - i) for i in range(int(stages))]


class SemanticVoxelHead(nn.Module):
    """Tokens ``(B, D, g, g, g)`` -> class logits ``(B, K, g * patch, ...)`` (module docstring)."""

    def __init__(self, dim: int, patch: int, classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for out in head_widths(patch):
            layers += [nn.Conv3d(width, out, 3, padding=1), nn.InstanceNorm3d(out), nn.LeakyReLU(0.2, inplace=True),
                       nn.Upsample(scale_factor=2)]  # fmt: skip
            width = out
        layers.append(nn.Conv3d(width, classes, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens)


def balanced_weights(scenes: list[LabeledGrid], classes: int) -> torch.Tensor:
    """``n / (K * count_k)`` over the labeled voxels (label > 0) of ``scenes``; a class never seen gets weight 1."""
    counts = sum(np.bincount(s.labels.reshape(-1), minlength=classes + 1)[1 : classes + 1] for s in scenes)
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.where(counts > 0, counts.sum() / (classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


class GridSegmenter(Method):
    """A grid encoder + :class:`SemanticVoxelHead`; weighted cross-entropy on labeled voxels. Classes are the label
    values ``1 .. K`` (logit ``k - 1`` for label ``k``); label 0 is ignored."""

    def __init__(self, backbone: nn.Module, classes: int, class_weights: torch.Tensor | None = None,
                 drop_path: float = 0.0, layer_decay: float = 1.0):  # fmt: skip
        super().__init__()
        if drop_path:
            set_drop_path(backbone, drop_path)
        self.encoder = backbone
        self.patch = int(backbone.patch_embed.patch_size[0])
        self.head = SemanticVoxelHead(int(backbone.embed_dim), self.patch, classes)
        self.classes, self.layer_decay = classes, float(layer_decay)
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(classes))

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    def logits(self, grid: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(grid)[:, int(self.encoder.num_prefix_tokens) :]
        g = [s // self.patch for s in grid.shape[2:]]
        return self.head(tokens.transpose(1, 2).reshape(grid.shape[0], -1, *g))

    def forward(self, batch: dict[str, Any], ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        logits = self.logits(batch["image"]).float()
        target = batch["label"].long() - 1  # label 0 (empty / unlabeled / padding) -> -1, ignored
        loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=-1)
        return {"loss": loss}

    def rank_inputs(self, batch: dict[str, Any]) -> None:
        return None  # supervised: no collapse monitor

    def optim_groups(self) -> list[dict]:
        return layer_decay_groups(self, "encoder.", len(self.encoder.blocks), self.layer_decay)


class LabeledGridSet(Dataset):
    """Labeled scenes as the encoder reads them: ``image`` ``(4, R, R, R)`` (alpha from sigma, fitted, zero-padded)
    and ``label`` ``(R, R, R)`` (fitted by nearest, 0 in the padding); ``augment``: NeRF-MAE's pretraining turn
    about z and W / L flips, the same on both."""

    def __init__(self, scenes: list[LabeledGrid], size: int, augment: bool = False):
        if not scenes:
            raise DataError(
                "data.grids: no labeled scenes in this split; give more scenes or other voxel_probe.val / test"
            )
        self.scenes, self.size, self.augment = scenes, int(size), bool(augment)
        self._read: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.scenes)

    def describe(self, index: int) -> str:
        return str(self.scenes[index].path)

    def item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(grid (4, W, L, H), labels (1, W, L, H))`` at the fitted size, unpadded (kept in memory)."""
        if index not in self._read:
            scene = self.scenes[index]
            grid = fit_grid(torch.from_numpy(grid_input(read_grid(scene.path))), self.size)
            labels = torch.from_numpy(fitted_labels(scene.labels, self.size))[None]
            self._read[index] = (grid, labels)
        return self._read[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        grid, labels = self.item(index)
        if self.augment:
            flips = torch.rand(3) < 0.5
            grid, labels = turn_and_flip(grid, flips), turn_and_flip(labels, flips)
        image, _ = pad_grid(grid.contiguous(), self.size)
        label, _ = pad_grid(labels.contiguous(), self.size)
        return {"image": image, "label": label[0]}


def scene_confusions(method: GridSegmenter, data: LabeledGridSet) -> list[np.ndarray]:
    """Per scene of ``data``, the ``K x K`` confusion of predicted vs true class over its labeled voxels."""
    out = []
    for i in range(len(data)):
        grid, labels = data.item(i)
        truth = labels[0].numpy().reshape(-1)
        keep = truth > 0
        pred = predict_labels(method, grid, data.size).reshape(-1)
        out.append(confusion(truth[keep], pred[keep], method.classes + 1)[1:, 1:])
    return out


@torch.no_grad()
def predict_labels(method: GridSegmenter, grid: torch.Tensor, size: int) -> np.ndarray:
    """Class ids ``1 .. K`` for every voxel of a fitted ``(4, W, L, H)`` grid."""
    device = next(method.parameters()).device
    image, _ = pad_grid(grid, size)
    logits = method.eval().logits(image[None].to(device))[0, :, : grid.shape[1], : grid.shape[2], : grid.shape[3]]
    return logits.argmax(0).cpu().numpy() + 1

"""A voxel-level linear probe for grid encoders (NeRF-MAE's semantic voxel labelling, frozen): each labeled scene's
grid is read as in pretraining (alpha from sigma, scaled to fit, zero-padded), the frozen encoder's patch tokens are
upsampled trilinearly to voxels, and a logistic regression on the voxels' features predicts their class.

As NeRF-MAE's ``run_voxel_semantics.py``: labels are per-voxel class ids with 0 = empty / unlabeled, and only voxels
with a label > 0 are trained on and scored; metrics are mIoU (mean over classes of TP / (TP + FP + FN)), mAcc (mean
class recall) and allAcc (overall accuracy) over those voxels. Ours: a linear probe on frozen features instead of
their finetuned decoder, up to ``voxels_per_scene`` training voxels per scene (seeded), ``C`` chosen on the
validation scenes' mIoU, 95 % CIs by resampling test scenes (voxels of one scene are not independent)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from domainfm.errors import DataError
from domainfm.evaluation.linear import DEFAULT_CS, fit_logistic
from domainfm.evaluation.metrics import bootstrap_indices
from domainfm.three_d.nerf_mae import fit_grid, fitted_shape, grid_input, pad_grid, read_grid
from torch import nn


@dataclass
class LabeledGrid:
    path: Path
    labels: np.ndarray  # (W, L, H) int, 0 = unlabeled


def read_labeled_grids(root: str | Path) -> list[LabeledGrid]:
    """Every ``.npz`` under ``root`` holding ``rgbsigma`` and ``labels`` (same ``(W, L, H)``)."""
    root = Path(root)
    files = sorted(root.rglob("*.npz")) if root.is_dir() else []
    if not files:
        raise DataError(f"data.grids={root}: no .npz grids (keys rgbsigma and labels)")
    out = []
    for path in files:
        with np.load(path) as data:
            if "labels" not in data:
                raise DataError(f"{path}: no 'labels' array (per-voxel class ids, 0 = unlabeled) beside rgbsigma")
            labels = data["labels"].astype(np.int64)
        grid_shape = read_grid(path).shape[:3]
        if labels.shape != grid_shape:
            raise DataError(f"{path}: labels {labels.shape} do not match the grid {grid_shape}")
        out.append(LabeledGrid(path, labels))
    return out


def split_scenes(n: int, seed: int = 0, val: float = 0.2, test: float = 0.3) -> np.ndarray:
    """``train`` / ``val`` / ``test`` per scene, from a seeded permutation (at least one of each)."""
    if n < 3:
        raise DataError(f"data.grids: {n} labeled scene(s); the probe needs at least 3 (train, val, test)")
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = max(1, round(test * n)), max(1, round(val * n))
    splits = np.full(n, "train", dtype=object)
    splits[order[:n_test]] = "test"
    splits[order[n_test : n_test + n_val]] = "val"
    return splits


@torch.no_grad()
def voxel_features(encoder: nn.Module, grid: np.ndarray, size: int, device="cpu") -> torch.Tensor:
    """``(D, W, L, H)`` features for the voxels of one ``rgbsigma`` grid, at the grid's own (fitted) size."""
    x = fit_grid(torch.from_numpy(grid_input(grid)), size)
    shape = tuple(x.shape[1:])
    padded, _ = pad_grid(x, size)
    tokens = encoder.forward_features(padded[None].to(device))[0, encoder.num_prefix_tokens :]
    g = size // int(encoder.patch_embed.patch_size[0])
    volume = tokens.T.reshape(1, -1, g, g, g).float()
    full = F.interpolate(volume, size=(size,) * 3, mode="trilinear", align_corners=False)[0]
    return full[:, : shape[0], : shape[1], : shape[2]].cpu()


def fitted_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Labels brought to the grid's fitted size (nearest), as :func:`fit_grid` scales the grid."""
    shape = fitted_shape(labels.shape, size)
    if shape is None:
        return labels
    t = torch.from_numpy(labels.astype(np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="nearest")[0, 0].numpy().astype(np.int64)


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def segmentation_metrics(cm: np.ndarray) -> dict[str, float]:
    """mIoU / mAcc over classes present in the truth, allAcc (NeRF-MAE's ``intersectionAndUnion`` means)."""
    tp = np.diag(cm).astype(float)
    truth, predicted = cm.sum(1).astype(float), cm.sum(0).astype(float)
    present = truth > 0
    iou = tp[present] / (truth + predicted - tp)[present]
    return {"miou": float(iou.mean()), "macc": float((tp[present] / truth[present]).mean()),
            "allacc": float(tp.sum() / max(cm.sum(), 1))}  # fmt: skip


def voxel_probe(encoder: nn.Module, scenes: list[LabeledGrid], splits: np.ndarray, voxels_per_scene: int = 2000,
                cs=DEFAULT_CS, n_boot: int = 1000, seed: int = 0, device="cpu") -> dict:  # fmt: skip
    """Fit on ``train`` scenes, choose ``C`` on ``val``, score ``test``: metrics, CIs, per-class IoU, chosen C."""
    size = int(encoder.pretrained_cfg["input_size"][1])
    classes = int(max(s.labels.max() for s in scenes)) + 1  # 0 included (never scored)
    rng = np.random.default_rng(seed)
    sets: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": [], "test": []}
    for scene, split in zip(scenes, splits):
        feats = voxel_features(encoder.eval(), read_grid(scene.path), size, device)
        labels = fitted_labels(scene.labels, size)
        idx = np.flatnonzero(labels.reshape(-1) > 0)
        if split == "train" and len(idx) > voxels_per_scene:
            idx = rng.choice(idx, voxels_per_scene, replace=False)
        x = feats.reshape(feats.shape[0], -1)[:, idx].T.numpy()
        sets[split].append((x, labels.reshape(-1)[idx]))
    train_x = np.concatenate([x for x, _ in sets["train"]])
    train_y = np.concatenate([y for _, y in sets["train"]])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6  # standardised features (the logistic fit's conditioning)
    present = np.unique(train_y)
    remap = np.zeros(classes, dtype=np.int64)
    remap[present] = np.arange(len(present))

    def predict(model, x):
        return present[model.predict_proba((x - mean) / std).argmax(-1)]

    best = None
    for c in cs:
        model = fit_logistic((train_x - mean) / std, remap[train_y], len(present), C=float(c), max_iter=300)
        cm = sum(confusion(y, predict(model, x), classes) for x, y in sets["val"])
        miou = segmentation_metrics(cm[1:, 1:])["miou"]
        if best is None or miou > best[0] + 1e-9:
            best = (miou, float(c), model)
    _, c, model = best
    per_scene = [confusion(y, predict(model, x), classes)[1:, 1:] for x, y in sets["test"]]
    return {**scene_scores(per_scene, n_boot, seed), "C": c,
            "scenes": {s: int((splits == s).sum()) for s in ("train", "val", "test")}}  # fmt: skip


def scene_scores(per_scene: list[np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics over the summed per-scene confusions, 95 % CIs resampling scenes, per-class IoU, voxel count."""
    total = sum(per_scene)
    point = segmentation_metrics(total)
    boots = [
        segmentation_metrics(sum(per_scene[i] for i in row)) for row in bootstrap_indices(len(per_scene), n_boot, seed)
    ]
    ci = {m: [float(v) for v in np.percentile([b[m] for b in boots], [2.5, 97.5])] for m in point}
    tp, union = np.diag(total), total.sum(0) + total.sum(1) - np.diag(total)
    per_class = [float(t / u) if u else None for t, u in zip(tp, union)]
    return {"metrics": point, "ci": ci, "iou_per_class": per_class, "test_voxels": int(total.sum())}

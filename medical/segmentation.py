"""Segmentation finetuning of a pretrained ViT under UNETR (:mod:`domainfm.medical.unetr`), 2D or 3D.

Recipe after SelfMedMAE's UNETR finetuning (Zhou et al., ISBI 2023, ``configs/unetr_btcv_1gpu.yaml``) and
UNETR / monai's BTCV tutorial:

- loss: monai ``DiceCELoss(to_onehot_y=True, softmax=True, smooth_nr=0, smooth_dr=1e-6)`` (Dice + CE, equal
  weights);
- training samples: ``samples_per_volume`` random ``roi`` crops per volume and epoch, a ``pos_fraction`` of them
  centred on a foreground voxel (monai ``RandCropByPosNegLabeld(pos=1, neg=1)``: 0.5), flips per axis and one
  axial 90-degree turn with probability 0.2, intensity scaled by ``1 + U(-0.1, 0.1)`` and shifted by
  ``U(-0.1, 0.1)`` with probability 0.1 each (``RandScaleIntensityd`` / ``RandShiftIntensityd``);
- AdamW, layer-wise lr decay 0.75 over the encoder (the decoder at the top layer), drop path 0.1;
- inference: monai ``sliding_window_inference`` over the whole volume (``overlap`` 0.5, Gaussian weighting);
  a 2D encoder segments volumes slice by slice (axial), 2D images are volumes of one slice;
- metrics per foreground class and case: Dice, and HD95 in mm (monai ``compute_hausdorff_distance(percentile=95,
  spacing=)``); a case whose class is absent from both truth and prediction gives no Dice for it (monai's
  ``ignore_empty``); HD95 of a class missing from one of them is infinite and counted, not averaged. Means over
  cases with bootstrap CIs (cases resampled).

Labeled cases are small sets (a few dozen studies): every split's volumes are decoded once and kept in memory.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.errors import DataError
from domainfm.evaluation.datasets import LabeledSet, read_table
from domainfm.evaluation.finetune import freeze_blocks, layer_decay_groups, set_drop_path
from domainfm.evaluation.metrics import bootstrap_indices
from domainfm.medical.intensity import Intensity
from domainfm.medical.labeled_volumes import normalise
from domainfm.medical.readers import read_volume
from domainfm.medical.unetr import UNETR, spatial_dims
from domainfm.methods.base import Method, StepContext
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")


# ---------------------------------------------------------------------------------------------------- data


def read_segmentation_csv(path: str | Path, root: str | Path | None = None) -> tuple[LabeledSet, dict[str, Path]]:
    """``image,label[,split][,group]`` rows -> a :class:`LabeledSet` of the images (one pseudo-class, so the core's
    grouped splits apply: a patient's studies stay in one split) and the label map file of each image id."""
    path = Path(path)
    columns, rows = read_table(path, ("image", "label"), "task=segmentation needs columns image,label[,split][,group]")
    base = Path(root) if root else path.parent
    for i, r in enumerate(rows):
        for key in ("image", "label"):
            if not (base / r[key]).exists():
                raise DataError(f"{path}: line {i + 2}: {key} {base / r[key]} not found (paths are relative to {base})")
    splits = None
    if "split" in columns:
        splits = np.array([r["split"].lower() for r in rows], dtype=object)
        bad = [i for i, s in enumerate(splits) if s not in ("train", "val", "test")]
        if bad:
            raise DataError(f"{path}: line {bad[0] + 2}: split={rows[bad[0]]['split']!r}; use train, val or test")
    groups = np.array([r["group"] for r in rows], dtype=object) if "group" in columns else None
    data = LabeledSet(
        [base / r["image"] for r in rows],
        [r["image"] for r in rows],
        np.zeros(len(rows), dtype=np.int64),
        ["case"],
        groups,
        splits,
        source=f"data.csv={path}",
    )
    return data, {r["image"]: base / r["label"] for r in rows}


@dataclass
class Case:
    """One labeled volume in memory: ``image (C, X, Y, Z)`` normalised, ``label (X, Y, Z)`` int, RAS."""

    id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def load_case(
    case_id: str,
    image_path: Path,
    label_path: Path,
    intensity: Intensity,
    modality: str,
    mean,
    std,
    spacing=None,
) -> Case:
    """Read an image and its label map (both to RAS), check they share the grid, resample (labels nearest) and
    normalise (``intensity``, then ``(x - mean) / std``)."""
    image, label = read_volume(image_path), read_volume(label_path)
    if image.shape[:3] != label.shape[:3] or not np.allclose(image.affine, label.affine, atol=1e-3):
        raise DataError(
            f"{label_path}: label grid {label.shape[:3]} / affine differs from image {image_path} {image.shape[:3]};"
            " resample the label onto the image grid"
        )
    values = np.asarray(label.array)
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise DataError(f"{label_path}: the label map has non-integer values; it must hold class indices 0..K-1")
    if spacing is not None:
        from domainfm.medical.resample import resample_to_spacing

        image, label = resample_to_spacing(image, spacing), resample_to_spacing(label, spacing, order=0)
    reading = {"intensity": intensity.to_dict(), "modality": modality, "mean": mean, "std": std}
    x = normalise(image, reading)
    return Case(case_id, x, np.asarray(label.array).astype(np.int64), tuple(image.spacing), image.affine)


def _pad_to(array: np.ndarray, size, value) -> np.ndarray:
    pad = [(0, 0)] * (array.ndim - len(size)) + [(0, max(0, s - n)) for s, n in zip(size, array.shape[-len(size) :])]
    return np.pad(array, pad, constant_values=value) if any(p[1] for p in pad) else array


class SegmentationPatches(Dataset):
    """Training crops of ``cases`` (see the module docstring): ``{"image": C x roi, "label": roi}``. ``dims=2``
    crops 2D ``roi`` windows of axial slices."""

    def __init__(
        self,
        cases: list[Case],
        roi,
        samples_per_volume: int = 4,
        pos_fraction: float = 0.5,
        flip: float = 0.2,
        rot90: float = 0.2,
        intensity_scale: float = 0.1,
        intensity_shift: float = 0.1,
        dims: int = 3,
    ):
        self.cases, self.roi, self.dims = cases, tuple(int(r) for r in roi), dims
        if len(self.roi) != dims:
            raise DataError(f"segmentation.roi={list(self.roi)} must have {dims} sizes for a {dims}D encoder")
        self.per, self.pos = int(samples_per_volume), float(pos_fraction)
        self.flip, self.rot90 = float(flip), float(rot90) if self.roi[0] == self.roi[1] else 0.0
        self.scale, self.shift = float(intensity_scale), float(intensity_shift)
        self._fg = [np.argwhere(c.label > 0) for c in cases]

    def __len__(self) -> int:
        return len(self.cases) * self.per

    def describe(self, index: int) -> str:
        return f"{self.cases[index // self.per].id} crop {index % self.per}"

    def _centre(self, k: int) -> list[int]:
        shape, fg = self.cases[k].label.shape, self._fg[k]
        if len(fg) and torch.rand(()) < self.pos:
            return [int(v) for v in fg[int(torch.randint(0, len(fg), ()))]]
        return [int(torch.randint(0, s, ())) for s in shape]

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = index // self.per
        case = self.cases[k]
        centre = self._centre(k)
        image, label = case.image, case.label
        if self.dims == 2:  # the axial slice through the centre
            image, label, centre = image[..., centre[2]], label[..., centre[2]], centre[:2]
        floor = float(image.min())
        image, label = _pad_to(image, self.roi, floor), _pad_to(label, self.roi, 0)
        start = [min(max(0, c - r // 2), s - r) for c, r, s in zip(centre, self.roi, label.shape)]
        window = tuple(slice(a, a + r) for a, r in zip(start, self.roi))
        x, y = image[(slice(None), *window)], label[window]
        axes = [a for a in range(self.dims) if self.flip and torch.rand(()) < self.flip]
        if axes:
            x, y = np.flip(x, [a + 1 for a in axes]), np.flip(y, axes)
        if self.rot90 and torch.rand(()) < self.rot90:
            x, y = np.rot90(x, 1, axes=(1, 2)), np.rot90(y, 1, axes=(0, 1))
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.scale and torch.rand(()) < 0.1:
            x = x * (1 + (torch.rand(()) * 2 - 1) * self.scale)
        if self.shift and torch.rand(()) < 0.1:
            x = x + (torch.rand(()) * 2 - 1) * self.shift
        return {"image": x, "label": torch.from_numpy(np.ascontiguousarray(y))}


# ---------------------------------------------------------------------------------------------------- model


class Segmenter(Method):
    """UNETR over ``backbone``, Dice + cross-entropy (monai ``DiceCELoss``), layer-wise lr decay over the ViT;
    ``train_blocks=n`` trains only the encoder's last ``n`` blocks and its final norm (0: the blocks frozen)."""

    def __init__(
        self,
        backbone: nn.Module,
        n_classes: int,
        feature_size: int = 16,
        drop_path: float = 0.1,
        layer_decay: float = 0.75,
        train_blocks: int | None = None,
        skip_norm: bool = False,
    ):
        super().__init__()
        from monai.losses import DiceCELoss

        if drop_path:
            set_drop_path(backbone, drop_path)
        if train_blocks is not None:  # 0: frozen blocks; the final norm and the UNETR decoder learn
            freeze_blocks(backbone, train_blocks)
        self.net = UNETR(backbone, n_classes, feature_size=feature_size, skip_norm=skip_norm)
        self.n_classes, self.layer_decay = n_classes, layer_decay
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, smooth_nr=0.0, smooth_dr=1e-6)

    @property
    def backbone(self) -> nn.Module:
        return self.net.encoder

    @property
    def dims(self) -> int:
        return spatial_dims(self.backbone)

    def forward(self, batch: dict[str, Any], ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(batch["image"])
        return {"loss": self.loss(logits.float(), batch["label"][:, None])}

    def rank_inputs(self, batch: dict[str, Any]) -> None:
        return None  # supervised: no collapse monitor (RankMe of a segmenter's cls token means nothing)

    def optim_groups(self) -> list[dict]:
        return layer_decay_groups(self, "net.encoder.", len(self.backbone.blocks), self.layer_decay)


@torch.no_grad()
def predict_volume(
    method: Segmenter, image: np.ndarray, roi, overlap: float = 0.5, sw_batch_size: int = 4
) -> np.ndarray:
    """Class index per voxel ``(X, Y, Z)`` of a normalised ``(C, X, Y, Z)`` volume by sliding-window inference
    (monai, Gaussian weighting); a 2D model runs over the axial slices."""
    from monai.inferers import sliding_window_inference

    was_training = method.training
    method.eval()
    device = next(method.parameters()).device
    x = torch.from_numpy(image).to(device)
    if method.dims == 3:
        logits = sliding_window_inference(x[None], tuple(roi), sw_batch_size, method.net, overlap, mode="gaussian")
        out = logits[0].argmax(0)
    else:
        slices = x.permute(3, 0, 1, 2)  # Z x C x X x Y
        parts = [
            sliding_window_inference(chunk, tuple(roi), sw_batch_size, method.net, overlap, mode="gaussian").argmax(1)
            for chunk in slices.split(16)
        ]
        out = torch.cat(parts).permute(1, 2, 0)
    method.train(was_training)
    return out.cpu().numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------------- metrics


def dice_per_class(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """``2 |P & T| / (|P| + |T|)`` per foreground class; ``nan`` where the class is in neither."""
    out = np.full(n_classes - 1, np.nan)
    for c in range(1, n_classes):
        p, t = pred == c, truth == c
        total = int(p.sum()) + int(t.sum())
        if total:
            out[c - 1] = 2.0 * int((p & t).sum()) / total
    return out


def hd95_per_class(pred: np.ndarray, truth: np.ndarray, n_classes: int, spacing) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance in mm per foreground class (monai); ``nan`` where the class
    is in neither, ``inf`` where it is in only one."""
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    out = np.full(n_classes - 1, np.nan)
    p = one_hot(torch.from_numpy(pred)[None, None], n_classes)
    t = one_hot(torch.from_numpy(truth)[None, None], n_classes)
    for c in range(1, n_classes):
        has_p, has_t = bool(p[0, c].any()), bool(t[0, c].any())
        if has_p and has_t:
            with warnings.catch_warnings():  # monai 1.5+: get_mask_edges' always_return_as_numpy deprecation
                warnings.simplefilter("ignore", FutureWarning)
                hd = compute_hausdorff_distance(
                    p[:, [0, c]], t[:, [0, c]], include_background=False, percentile=95, spacing=list(spacing)
                )
            out[c - 1] = float(hd.flatten()[0])
        elif has_p or has_t:
            out[c - 1] = np.inf
    return out


def _summary(values: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean over cases (finite values) with a bootstrap 95 % CI over cases."""
    finite = np.where(np.isfinite(values), values, np.nan)
    if np.all(np.isnan(finite)):
        return {"mean": None, "ci": [None, None], "n": 0, "not_finite": int(np.isinf(values).sum())}
    idx = bootstrap_indices(len(values), n_boot, seed)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boots = np.nanmean(finite[idx], axis=1)
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return {
        "mean": float(np.nanmean(finite)),
        "ci": [float(lo), float(hi)],
        "n": int(np.isfinite(values).sum()),
        "not_finite": int(np.isinf(values).sum()),
    }


def segmentation_scores(
    per_case: list[dict[str, Any]], classes: list[str], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Dice and HD95 per foreground class and their mean over classes, each with bootstrap CIs over cases."""
    dice = np.array([c["dice"] for c in per_case], dtype=float)
    hd = np.array([c["hd95"] for c in per_case], dtype=float)
    out: dict[str, Any] = {"cases": len(per_case), "dice": {}, "hd95": {}}
    for k, name in enumerate(classes[1:]):
        out["dice"][name] = _summary(dice[:, k], n_boot, seed)
        out["hd95"][name] = _summary(hd[:, k], n_boot, seed)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["mean_dice"] = _summary(np.nanmean(dice, axis=1), n_boot, seed)
        finite = np.where(np.isfinite(hd), hd, np.nan)
        out["mean_hd95"] = _summary(np.nanmean(finite, axis=1), n_boot, seed)
    return out


def score_cases(method: Segmenter, cases: list[Case], n_classes: int, roi, overlap, sw_batch_size) -> list[dict]:
    """Predict and score every case: ``[{"id", "dice": [...], "hd95": [...], "prediction"}]``."""
    rows = []
    for case in cases:
        pred = predict_volume(method, case.image, roi, overlap, sw_batch_size)
        rows.append(
            {
                "id": case.id,
                "dice": dice_per_class(pred, case.label, n_classes).tolist(),
                "hd95": hd95_per_class(pred, case.label, n_classes, case.spacing).tolist(),
                "prediction": pred,
            }
        )
    return rows


def render_segmentation(results: dict[str, dict], classes: list[str], notes: list[str]) -> str:
    """Markdown: one row per backbone, mean Dice / HD95 per class with CIs."""

    def cell(s: dict) -> str:
        extra = f" ({s['not_finite']} inf)" if s.get("not_finite") else ""
        if s["mean"] is None:
            return "n/a" + extra
        return f"{s['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]{extra}"

    head = ["backbone", "mean Dice"] + [f"Dice {c}" for c in classes[1:]] + ["mean HD95 (mm)"]
    head += [f"HD95 {c}" for c in classes[1:]]
    lines = ["# domainfm finetune task=segmentation", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        row = [name, cell(r["mean_dice"])] + [cell(r["dice"][c]) for c in classes[1:]] + [cell(r["mean_hd95"])]
        row += [cell(r["hd95"][c]) for c in classes[1:]]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Means over test cases with bootstrap 95 % CIs (cases resampled); HD95 over cases where both the",
        "prediction and the truth hold the class (the count of the others in brackets).",
        "",
        *notes,
        "",
    ]
    return "\n".join(lines)


def overlay_figure(cases: list[Case], predictions: list[np.ndarray], classes: list[str], out: Path) -> Path:
    """Per test case (up to 4): the axial slice with the most foreground, truth and prediction over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    n = min(4, len(cases))
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), dpi=100, squeeze=False)
    colours = ListedColormap(plt.get_cmap("tab10").colors[: max(1, len(classes) - 1)])
    for i in range(n):
        case, pred = cases[i], predictions[i]
        z = int(np.argmax((case.label > 0).sum((0, 1)))) if case.label.shape[2] > 1 else 0
        image = case.image[0, :, :, z].T[::-1, ::-1]  # anterior up, the patient's right on the left
        for j, (mask, title) in enumerate(((None, case.id), (case.label, "truth"), (pred, "prediction"))):
            ax = axes[i, j]
            ax.imshow(image, cmap="gray")
            if mask is not None:
                m = mask[:, :, z].T[::-1, ::-1]
                ax.imshow(np.ma.masked_equal(m, 0) - 1, cmap=colours, alpha=0.5, vmin=0, vmax=max(1, len(classes) - 2))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_prediction(pred: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """A predicted label map as NIfTI on the image's (RAS) grid."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(pred.astype(np.uint8 if pred.max() < 256 else np.int16), affine), str(path))
    return path


def write_segmenter(method: Segmenter, folder: Path, settings: dict) -> None:
    """The whole finetuned UNETR (encoder + decoder) as ``segmenter.safetensors`` + ``segmenter.json``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in method.net.state_dict().items()}
    save_file(state, str(folder / "segmenter.safetensors"))
    (folder / "segmenter.json").write_text(json.dumps(settings, indent=2))

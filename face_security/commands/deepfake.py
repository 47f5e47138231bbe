"""``domainfm finetune task=deepfake data.csv=<path,label[,split][,group][,video]> backbone=<...>``: real/fake
(or, ``task=antispoofing``, live/spoof) finetuning on face frames with frame- and video-level scores, as FSFM
reports them (``fsfm-3c/finuetune/cross_dataset_DfD/engine_finetune.py`` + ``util/metrics.py``).

- Frames of one video share its ``video`` column (default: ``group``; with class folders
  ``root/<class>/<video>/<frame>``, the folder); a video's score is the mean of its frames' class probabilities.
- Splits are grouped by ``group`` (identity) when given, else by video, so no face is in two splits. For
  cross-dataset evaluation give the ``split`` column yourself (train/val on one dataset, test on another).
- Rows: ``finetune`` (per frame: AUROC, balanced accuracy, ... with bootstrap CIs; frame EER in its details) and
  ``finetune, per video`` (the same on video means, video EER); ``<run>/test_scores.csv`` holds every test frame's
  video, label and score (probability of the second class in alphabetical order: ``real`` of fake/real, as in
  FSFM where score = P(real)).
- ``task=antispoofing`` adds FSFM's cross-domain FAS figures to both rows' details (``face_security.metrics``):
  HTER at the scored set's own EER threshold (as published), HTER at 0.5, TPR at FPR = 1 %, with real / live as
  the bona fide class.
- The core's training recipe (layer-wise lr decay, drop path, crop + flip, best-on-val checkpoint) with FSFM's
  regularisers as this task's defaults (``main_finetune_DfD.py`` as its README runs it: ``--mixup 0.8 --cutmix 1.0
  --reprob 0.25``, timm's Mixup / RandomErasing, pixel mode): ``finetune.mixup`` / ``cutmix`` / ``erase`` left null
  become 0.8 / 1.0 / 0.25; give 0 to turn one off.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from domainfm.commands.common import output_dir, write_config
from domainfm.commands.finetune import finetune_backbones, image_input
from domainfm.commands.labeled import split_labeled
from domainfm.engine.runlock import RunLock
from domainfm.errors import DataError
from domainfm.evaluation.datasets import LabeledSet, load_labeled, read_table
from domainfm.evaluation.results import ProtocolResult
from domainfm.face_security.metrics import bona_fide_index, eer, fas_scores, video_level
from omegaconf import DictConfig, open_dict

FSFM_REGULARISERS = {"mixup": 0.8, "cutmix": 1.0, "erase": 0.25}


def video_ids(data: LabeledSet, csv_path: str | None) -> np.ndarray:
    """Each sample's video: the CSV's ``video`` column, else its ``group``, else its class folder's sub-folder
    (``<class>/<video>/<frame>``), else the frame itself (one frame, one video)."""
    if csv_path:
        columns, rows = read_table(csv_path, ("path", "label"), "needs a header with columns path,label")
        if "video" in columns:
            return np.array([r["video"] for r in rows], dtype=object)
    if data.groups is not None:
        return data.groups.copy()
    return np.array([str(Path(i).parent) if len(Path(i).parts) > 2 else i for i in data.ids], dtype=object)


def faces_data(cfg: DictConfig, out: Path) -> tuple[LabeledSet, dict[str, str]]:
    """The labeled frames with splits grouped by identity (``group``) or else by video, and id -> video."""
    data = load_labeled(cfg.data.get("root"), cfg.data.get("csv"))
    if len(data.classes) != 2:
        raise DataError(
            f"{data.source}: task={cfg.task} needs exactly two classes (real/fake, live/spoof); found {data.classes}"
        )
    videos = video_ids(data, cfg.data.get("csv"))
    if data.groups is None:
        data = replace(data, groups=videos)
    data = split_labeled(data, cfg, out, what="faces")
    return data, dict(zip(data.ids, videos))  # splitting keeps the order


def _with_fas(details: dict, labels: np.ndarray, probs: np.ndarray, classes) -> None:
    """Anti-spoofing figures (HTER, TPR at FPR 1 %) into ``details``, bona fide positive; both classes needed."""
    k = bona_fide_index(classes)
    if len(set(labels.tolist())) == 2:
        fas = fas_scores(labels == k, probs[:, k])
        details.update({key: fas[key] for key in ("hter", "hter_at_0.5", "tpr_at_fpr_1pct")})
        details["selected"] += f"; HTER {fas['hter']:.3f} (at 0.5: {fas['hter_at_0.5']:.3f})"


def per_video(videos: dict[str, str], n_boot: int, seed: int, antispoofing: bool = False):
    """``more_results`` for :func:`finetune_backbones`: the video-level row, frame EER, ``test_scores.csv``
    (``antispoofing``: HTER and TPR at FPR 1 % too)."""

    def rows(name: str, test: LabeledSet, result: ProtocolResult, run_dir: Path) -> list[ProtocolResult]:
        frame_videos = [videos[i] for i in test.ids]
        labels, scores = result.y_true, result.probs[:, 1]
        ids, v_labels, v_real = video_level(frame_videos, labels, scores)
        v_probs = np.stack([video_level(frame_videos, labels, result.probs[:, 0])[2], v_real], axis=1)
        frame_eer = eer(labels, scores) if len(set(labels)) == 2 else float("nan")
        video_eer = eer(v_labels, v_probs[:, 1]) if len(set(v_labels)) == 2 else float("nan")
        result.details["eer"] = frame_eer
        result.details["selected"] = f"{result.details['selected']}; EER {frame_eer:.3f}"
        details = {"selected": f"mean of frame scores; EER {video_eer:.3f}", "eer": video_eer, "videos": len(ids)}
        if antispoofing:
            _with_fas(result.details, np.asarray(labels), result.probs, result.classes)
            _with_fas(details, np.asarray(v_labels), v_probs, result.classes)
        video_result = ProtocolResult.from_predictions(
            "finetune, per video", result.classes, v_labels, v_probs, n_boot, seed, details
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / "test_scores.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "video", "label", f"p_{result.classes[1]}"])
            for i, v, y, s in zip(test.ids, frame_videos, labels, scores):
                writer.writerow([i, v, result.classes[y], f"{s:.6f}"])
        return [video_result]

    return rows


def with_fsfm_regularisers(cfg: DictConfig) -> DictConfig:
    """``cfg`` with FSFM's mixup / cutmix / random erasing where ``finetune.*`` leaves them null."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in FSFM_REGULARISERS.items():
            if cfg.finetune.get(key) is None:
                cfg.finetune[key] = value
    return cfg


def finetune(cfg: DictConfig) -> dict[str, Any]:
    cfg = with_fsfm_regularisers(cfg)
    out = output_dir(cfg)
    with RunLock(out, "domainfm finetune"):
        write_config(cfg, out)
        data, videos = faces_data(cfg, out)
        more = per_video(videos, int(cfg.metrics.bootstrap), int(cfg.metrics.seed), cfg.task == "antispoofing")
        return finetune_backbones(cfg, out, data, image_input(cfg, data), what="faces", more_results=more)

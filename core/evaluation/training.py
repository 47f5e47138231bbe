"""Supervised training through the engine with model selection on validation (finetuning, ABMIL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from domainfm.data.collate import collate_samples
from domainfm.engine.trainer import RunSummary, Trainer, TrainerConfig
from domainfm.errors import ConfigError
from domainfm.evaluation.metrics import scores
from domainfm.methods.base import Method
from torch.utils.data import Dataset


def validation_scores(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``val_loss`` (mean negative log-likelihood) and ``val_<metric>`` for every metric."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    nll = -np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None)).mean()
    return {"val_loss": float(nll), **{f"val_{k}": float(v) for k, v in scores(y_true, probs).items()}}


def fit_best(
    method: Method,
    dataset: Dataset,
    run_dir: str | Path,
    cfg: TrainerConfig,
    validate: Callable[[Method], dict[str, float]],
    transform: Callable | None = None,
    collate_fn: Callable = collate_samples,
    sample_weights: torch.Tensor | None = None,
    desc: str = "train",
) -> tuple[RunSummary, int]:
    """Train with the engine (validating every ``cfg.eval_every`` steps, early stopping after ``cfg.patience``),
    then load the best-on-validation state (``checkpoints/best.pt``) into ``method``. Returns the run summary
    and the best step. Rerunning with the same ``run_dir`` resumes."""
    if not cfg.eval_every:
        raise ConfigError("trainer.eval_every must be > 0: the checkpoint is chosen on the validation split")
    trainer = Trainer(
        method,
        dataset,
        run_dir,
        cfg,
        transform=transform,
        collate_fn=collate_fn,
        validate=validate,
        sample_weights=sample_weights,
        desc=desc,
    )
    summary = trainer.fit()
    best = torch.load(Path(run_dir) / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    method.load_state_dict(best["model"])
    method.eval()
    return summary, int(best["step"])


def class_balance_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Per-sample weights ``1 / count(class)``: every class is drawn equally often."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    return torch.as_tensor(1.0 / np.maximum(counts, 1)[np.asarray(labels)], dtype=torch.double)

"""One protocol's outcome on the test split: predictions, metrics with CIs, and protocol details."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from domainfm.evaluation.metrics import evaluate_predictions


@dataclass
class ProtocolResult:
    """``scores`` is :func:`evaluate_predictions` output; few-shot rows have ``episodes`` (metric -> mean, std)
    instead; ``details`` holds what was selected on validation (C, head, checkpoint step, ...)."""

    protocol: str
    classes: list[str]
    y_true: np.ndarray | None = None
    probs: np.ndarray | None = None
    scores: dict[str, Any] | None = None
    episodes: dict[str, list[float]] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_predictions(
        cls,
        protocol: str,
        classes: list[str],
        y_true: np.ndarray,
        probs: np.ndarray,
        n_boot: int = 1000,
        seed: int = 0,
        details: dict[str, Any] | None = None,
    ) -> ProtocolResult:
        y_true, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
        scores = evaluate_predictions(y_true, probs, n_boot=n_boot, seed=seed)
        return cls(protocol, list(classes), y_true, probs, scores, details=dict(details or {}))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol, "classes": self.classes, "details": self.details}
        if self.scores is not None:
            out.update(self.scores)
        if self.episodes is not None:
            out["episodes"] = self.episodes
        return out

"""The run log: ``<run_dir>/metrics.jsonl``, one JSON object per logged step (written by the engine's
``MetricsLogger``, read by the reports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every readable line of the run's ``metrics.jsonl`` (a torn last line is skipped)."""
    path = metrics_path(run_dir)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out

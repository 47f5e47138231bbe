"""Metric sinks: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domainfm.common.runlog import metrics_path


class MetricsLogger:
    """Appends to ``<run_dir>/metrics.jsonl``; on resume, lines at or after the resumed step are dropped so the
    file reads as one uninterrupted run."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int = 0):
        self.path = metrics_path(run_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - held open for the run
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step or None)
            except ImportError:  # tensorboard is a base dependency; tolerate its absence anyway
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        self.path.write_text("".join(k + "\n" for k in keep))

    def log(self, step: int, values: dict[str, Any]) -> None:
        record = {"step": step, **values}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

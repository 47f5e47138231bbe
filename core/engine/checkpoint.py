"""Atomic, rotating checkpoints and RNG state capture.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then renamed over
``step_XXXXXXXX.pt`` (and the folder fsync'ed), so a kill at any moment leaves either the old or the new file,
never half of one. Loading uses ``weights_only=True``; a truncated or corrupt newest file is reported and the
previous one is used.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as weights-only-loadable objects."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename + fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write bytes atomically (same protocol as :func:`atomic_save`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    """``<run_dir>/checkpoints/step_XXXXXXXX.pt``; keeps the newest ``keep_last``."""

    def __init__(self, folder: str | Path, keep_last: int = 3):
        self.folder = Path(folder)
        self.keep_last = max(1, int(keep_last))

    def path_for(self, step: int) -> Path:
        return self.folder / f"step_{step:08d}.pt"

    def list(self) -> list[Path]:
        """Checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = self.path_for(step)
        atomic_save(state, path)
        for old in self.list()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        for tmp in self.folder.glob(".step_*.pt.tmp-*"):  # leftovers of killed writers
            tmp.unlink(missing_ok=True)
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
        """Newest loadable checkpoint; corrupt ones are skipped with a warning."""
        for path in reversed(self.list()):
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
                if not isinstance(state, dict) or "step" not in state:
                    raise ValueError("not a domainfm checkpoint")
                return state, path
            except Exception as err:  # noqa: BLE001 - any failure means: try the previous one
                log.warning(
                    "checkpoint %s is unreadable (%s); falling back to the previous one",
                    path,
                    str(err).splitlines()[0][:200],
                )
        return None

    def set_aside(self, why: str) -> Path:
        """Move every checkpoint into ``<folder>/set-aside-<n>-<why>/`` (kept, never deleted; out of the way of
        resuming and rotation) and return that folder."""
        n = 1 + sum(1 for p in self.folder.iterdir() if p.is_dir() and p.name.startswith("set-aside-"))
        dest = self.folder / f"set-aside-{n}-{why}"
        dest.mkdir(parents=True)
        for path in self.list():
            path.rename(dest / path.name)
        return dest

    def latest_path(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None

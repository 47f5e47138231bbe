"""Per-slide ``.h5`` files in the TRIDENT/CLAM layout, written atomically (temp file + fsync + rename).

Layout: dataset ``coords`` (N, 2) int64, top-left corners in level-0 pixels, with the attributes ``patch_size``
(pixels at the target MPP), ``patch_size_level0``, ``level0_magnification``, ``target_magnification``,
``target_mpp``, ``overlap``, ``level0_width``, ``level0_height`` (on ``coords`` as TRIDENT reads them, and on the
file). ``domainfm_params`` (JSON) holds everything that made the file, so a rerun with other settings is caught.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

PARAMS_ATTR = "domainfm_params"


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed over it (after fsync) when the block ends, removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_h5(path: str | Path, datasets: dict[str, np.ndarray], attrs: dict[str, Any], params: dict) -> None:
    """Write ``datasets`` with ``attrs`` on ``coords`` and on the file, plus the JSON ``params``, atomically."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
        for key, value in {**attrs, PARAMS_ATTR: json.dumps(params, sort_keys=True)}.items():
            f.attrs[key] = value
            if "coords" in f and key != PARAMS_ATTR:
                f["coords"].attrs[key] = value


def read_coords(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(coords (N, 2) int64, attrs)`` of a coords (or features) file; attrs are read from ``coords`` as TRIDENT
    writes them, and completed from the file's attributes."""
    with h5py.File(path, "r") as f:
        coords = np.asarray(f["coords"][:], dtype=np.int64).reshape(-1, 2)
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        attrs.update({k: _plain(v) for k, v in f["coords"].attrs.items()})
    return coords, attrs


def read_params(path: str | Path) -> dict | None:
    """The ``domainfm_params`` of an output file, or None when the file is missing, unreadable or has none."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs[PARAMS_ATTR])
    except (OSError, KeyError, ValueError):
        return None


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value

"""Labeled image sets for evaluation: class folders or a CSV ``path,label[,split][,group]``, and a stratified
split that keeps every group (patient, slide, site) inside one split.

Labels that are all integers are ordered numerically (so grades keep their order for kappa), others
alphabetically. CSV paths are relative to ``data.root`` when given, else to the CSV's folder.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.data.folder import list_files
from domainfm.data.images import read_image
from domainfm.errors import DataError
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")

SPLITS = ("train", "val", "test")


@dataclass
class LabeledSet:
    """Files with integer labels (indices into ``classes``), optional groups and splits."""

    paths: list[Path]
    ids: list[str]
    labels: np.ndarray
    classes: list[str]
    groups: np.ndarray | None = None
    splits: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, split: str) -> LabeledSet:
        """The samples of one split."""
        if self.splits is None:
            raise DataError(f"{self.source} has no splits yet")
        keep = np.flatnonzero(self.splits == split)
        return replace(
            self,
            paths=[self.paths[i] for i in keep],
            ids=[self.ids[i] for i in keep],
            labels=self.labels[keep],
            groups=None if self.groups is None else self.groups[keep],
            splits=self.splits[keep],
        )


def class_order(names: Sequence[str]) -> list[str]:
    """Unique names, numerically ordered when all are integers, else alphabetically."""
    unique = set(names)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def encode_labels(names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    classes = class_order(names)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] for n in names], dtype=np.int64), classes


def load_labeled(
    root: str | Path | None = None, csv_path: str | Path | None = None, folders: bool = False
) -> LabeledSet:
    """Class folders under ``root`` (``root/<class>/<image>``), or the rows of ``csv_path`` (``folders``: a row's
    path may be a folder, e.g. a DICOM series)."""
    if csv_path:
        return _read_csv(Path(csv_path).expanduser(), Path(root).expanduser() if root else None, folders)
    if not root:
        raise DataError("no data given: set data.root=<class folders> or data.csv=<path,label[,split][,group] csv>")
    root = Path(root).expanduser()
    files = list_files(root)
    rel = [f.relative_to(root) for f in files]
    if any(len(r.parts) < 2 for r in rel):
        raise DataError(
            f"data.root={root} needs one sub-folder per class (root/<class>/<image>), "
            "or give data.csv=<path,label[,split][,group] csv>"
        )
    labels, classes = encode_labels([r.parts[0] for r in rel])
    return LabeledSet(files, [r.as_posix() for r in rel], labels, classes, source=f"data.root={root}")


def read_table(path: str | Path, required: tuple[str, ...], need: str) -> tuple[list[str], list[dict[str, str]]]:
    """A labeled-data CSV's ``(columns, rows)`` (names and values stripped); one line naming the file when it is
    missing, lacks one of ``required`` (``need`` says what it must have) or has no rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.csv={path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not set(required) <= set(columns):
        raise DataError(f"{path}: {need}; found {columns}")
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return columns, rows


def _read_csv(path: Path, root: Path | None, folders: bool = False) -> LabeledSet:
    columns, rows = read_table(path, ("path", "label"), "needs a header with columns path,label[,split][,group]")
    base = root or path.parent
    paths = [base / r["path"] for r in rows]
    missing = [(i, p) for i, p in enumerate(paths) if not (p.exists() if folders else p.is_file())]
    if missing:
        i, p = missing[0]
        raise DataError(
            f"{path}: line {i + 2}: {p} not found ({len(missing)} missing; paths are relative to {base}, "
            "set data.root to change that)"
        )
    labels, classes = encode_labels([r["label"] for r in rows])
    splits = None
    if "split" in columns:
        splits = np.array([r["split"].lower() for r in rows], dtype=object)
        bad = [i for i, s in enumerate(splits) if s not in SPLITS]
        if bad:
            raise DataError(f"{path}: line {bad[0] + 2}: split={rows[bad[0]]['split']!r}; use train, val or test")
    groups = np.array([r["group"] for r in rows], dtype=object) if "group" in columns else None
    return LabeledSet(paths, [r["path"] for r in rows], labels, classes, groups, splits, source=f"data.csv={path}")


def grouped_stratified_split(
    labels: np.ndarray, groups: np.ndarray | None = None, val: float = 0.15, test: float = 0.2, seed: int = 0
) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per sample: class-stratified, and all samples of a group in one split.

    Uses scikit-learn's ``StratifiedGroupKFold(shuffle=True, random_state=seed)``: the test split is the first
    of ``round(1 / test)`` folds, the validation split the first of ``round((1 - test) / val)`` folds of the
    rest, so the fractions are approximate. Without ``groups`` every sample is its own group.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    out = np.full(len(labels), "train", dtype=object)
    rest = np.arange(len(labels))
    for name, fraction, of in (("test", test, 1.0), ("val", val, 1.0 - test)):
        if fraction <= 0:
            continue
        folds = max(2, round(of / fraction))
        n_groups = len(np.unique(groups[rest]))
        if n_groups < folds:
            raise DataError(f"{n_groups} groups are too few for a {fraction:.0%} {name} split; add a split column")
        largest = int(np.unique(labels[rest], return_counts=True)[1].max())
        if largest < folds:  # tiny sets: scikit-learn needs a class with at least `folds` members
            log.warning(
                "classes of at most %d samples: the %s split takes 1/%d of the data instead of %.0f%%",
                largest,
                name,
                max(2, largest),
                fraction * 100,
            )
            folds = max(2, largest)
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
            _, held = next(splitter.split(np.zeros(len(rest)), labels[rest], groups[rest]))
        out[rest[held]] = name
        rest = rest[out[rest] == "train"]
    return out


def with_splits(data: LabeledSet, val: float = 0.15, test: float = 0.2, seed: int = 0) -> LabeledSet:
    """``data`` with a split per sample: the CSV's own, with a validation split carved from ``train`` when it
    has none, or a new grouped stratified split."""
    if data.splits is None:
        return replace(data, splits=grouped_stratified_split(data.labels, data.groups, val, test, seed))
    splits = data.splits.copy()
    for name in ("train", "test"):
        if not (splits == name).any():
            raise DataError(f"{data.source}: the split column has no '{name}' rows")
    if not (splits == "val").any():
        train = np.flatnonzero(splits == "train")
        groups = None if data.groups is None else data.groups[train]
        share = val / max(1e-9, 1.0 - test)
        sub = grouped_stratified_split(data.labels[train], groups, val=share, test=0.0, seed=seed)
        splits[train[sub == "val"]] = "val"
    return replace(data, splits=splits)


def check_groups(data: LabeledSet) -> None:
    """Raise when a group has samples in more than one split (a leak)."""
    if data.groups is None or data.splits is None:
        return
    seen: dict[Any, str] = {}
    for g, s in zip(data.groups, data.splits):
        if seen.setdefault(g, s) != s:
            raise DataError(
                f"{data.source}: group {g!r} is in both '{seen[g]}' and '{s}'; keep each group in one split"
            )


def save_splits(data: LabeledSet, path: str | Path) -> Path:
    """Write ``path,label,split[,group]`` (usable again as ``data.csv``, with ``data.root`` the same)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["path", "label", "split"] + (["group"] if data.groups is not None else [])
        writer.writerow(header)
        for i, sample_id in enumerate(data.ids):
            row = [sample_id, data.classes[data.labels[i]], data.splits[i]]
            writer.writerow(row + ([data.groups[i]] if data.groups is not None else []))
    return path


class ImageList(Dataset):
    """Images from a list of files. Sample: ``{"image": C x H x W, "label": int, "meta": {"id": ...}}``
    (no ``label`` when ``labels`` is None); ``view`` maps the image tensor (e.g. ``ResizeView``)."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int] | np.ndarray | None = None,
        ids: Sequence[str] | None = None,
        channels: int | None = 3,
        view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.paths = [Path(p) for p in paths]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.ids = list(ids) if ids is not None else [p.name for p in self.paths]
        self.channels, self.view = channels, view

    @classmethod
    def of(cls, data: LabeledSet, channels: int | None = 3, view=None) -> ImageList:
        return cls(data.paths, data.labels, data.ids, channels, view)

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = read_image(self.paths[index], self.channels)
        sample: dict[str, Any] = {"image": self.view(image) if self.view else image, "meta": {"id": self.ids[index]}}
        if self.labels is not None:
            sample["label"] = int(self.labels[index])
        return sample


_GREY = ("1", "L", "LA", "I", "F")


def image_channels(path: str | Path) -> int:
    """Channels an image file holds (alpha not counted; palette images count as colour)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
        if mode.startswith(_GREY):
            return 1
        if mode in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            return 3
    except (OSError, Image.DecompressionBombError):
        pass  # read_image names the problem
    return int(read_image(path, None).shape[0])

"""Folder datasets: every image under a root (recursive), optional labels from the first sub-folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domainfm.data.images import IMAGE_EXTENSIONS, read_image
from domainfm.errors import DataError
from torch.utils.data import Dataset


def list_files(root: str | Path, extensions: tuple[str, ...] | list[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All files under ``root`` with one of ``extensions`` (case-insensitive), sorted; clear error if none."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data.root={root} does not exist: point data.root at a folder of images")
    exts = tuple(e.lower() for e in extensions)
    if root.is_file():
        files = [root] if root.suffix.lower() in exts else []
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise DataError(f"data.root={root} holds no files ending in {', '.join(exts)}: point data.root at your images")
    return files


class ImageFolder(Dataset):
    """Images under ``root`` (recursive). Sample: ``{"image": C x H x W float, "meta": {"path": ...}}`` plus
    ``"label"`` (index of the first-level sub-folder) when ``labels=True``."""

    def __init__(
        self,
        root: str | Path,
        in_chans: int | None = 3,
        extensions: tuple[str, ...] | list[str] = IMAGE_EXTENSIONS,
        labels: bool = False,
    ):
        self.root = Path(root).expanduser()
        self.files = list_files(self.root, extensions)
        self.in_chans = in_chans
        self.classes: list[str] = []
        self.targets: list[int] = []
        if labels:
            names = [f.relative_to(self.root).parts[0] if f != self.root else "" for f in self.files]
            if any(len(f.relative_to(self.root).parts) < 2 for f in self.files):
                raise DataError(f"{self.root}: labels=True needs one sub-folder per class (root/<class>/<image>)")
            self.classes = sorted(set(names))
            index = {c: i for i, c in enumerate(self.classes)}
            self.targets = [index[n] for n in names]

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        sample: dict[str, Any] = {
            "image": read_image(path, self.in_chans),
            "meta": {"path": str(path.relative_to(self.root)) if path != self.root else path.name},
        }
        if self.targets:
            sample["label"] = self.targets[index]
        return sample

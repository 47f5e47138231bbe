"""Image-caption pairs for CLIP-style training: a COCO-style captions json or a CSV ``path,caption``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from domainfm.data.images import read_image
from domainfm.errors import DataError
from torch.utils.data import Dataset


def _read_pairs(annotations: Path, root: Path) -> list[tuple[Path, str]]:
    if not annotations.exists():
        raise DataError(f"{annotations} not found: give data.captions=<COCO json or CSV with path,caption>")
    if annotations.suffix.lower() == ".json":
        doc = json.loads(annotations.read_text())
        if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
            raise DataError(f"{annotations}: not a COCO captions file (needs 'images' and 'annotations')")
        files = {im["id"]: im["file_name"] for im in doc["images"]}
        return [(root / files[a["image_id"]], str(a["caption"])) for a in doc["annotations"] if a["image_id"] in files]
    with open(annotations, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "caption"} <= set(rows[0]):
        raise DataError(f"{annotations}: the CSV needs the columns path,caption")
    return [(root / r["path"], r["caption"]) for r in rows]


class ImageCaptions(Dataset):
    """One sample per caption: ``{"image": C x H x W, "text": token ids (context_length,), "meta": {...}}``.
    Tokenisation uses open_clip's bundled BPE tokenizer (``tokenizer`` names an open_clip model)."""

    def __init__(
        self,
        root: str | Path,
        captions: str | Path,
        in_chans: int = 3,
        tokenizer: str = "ViT-B-32",
        context_length: int = 77,
    ):
        import open_clip

        self.root = Path(root)
        self.pairs = _read_pairs(Path(captions), self.root)
        if not self.pairs:
            raise DataError(f"{captions} lists no image-caption pairs")
        self.in_chans = in_chans
        self.tokenizer = open_clip.get_tokenizer(tokenizer, context_length=context_length)

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        return str(self.pairs[index][0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, caption = self.pairs[index]
        return {
            "image": read_image(path, self.in_chans),
            "text": self.tokenizer([caption])[0],
            "meta": {"path": str(path.relative_to(self.root)), "caption": caption},
        }

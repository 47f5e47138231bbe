"""Image-caption pairs for CLIP-style training: a COCO-style captions json or a CSV ``path,caption[,language]``.

Several captions per image (RSICD: 5; machine-translated sets: several per language) are kept together: with
``per="image"`` a sample is one image and a caption drawn uniformly at random among its captions (in the
languages kept), so a batch never holds the same image twice (false negatives for the contrastive loss); with
``per="caption"`` (default) every pair is a sample. The language is a ``language`` column in the CSV or a
``language`` key on each COCO annotation (default ``language``: ``en``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from domainfm.data.images import read_image
from domainfm.errors import DataError
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Caption:
    path: Path
    text: str
    language: str


def read_captions(annotations: str | Path, root: str | Path, default_language: str = "en") -> list[Caption]:
    """Every caption of a COCO captions json or a CSV ``path,caption[,language]`` (paths relative to ``root``)."""
    annotations, root = Path(annotations), Path(root)
    if not annotations.exists():
        raise DataError(f"{annotations} not found: give data.captions=<COCO json or CSV with path,caption>")
    if annotations.suffix.lower() == ".json":
        doc = json.loads(annotations.read_text())
        if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
            raise DataError(f"{annotations}: not a COCO captions file (needs 'images' and 'annotations')")
        files = {im["id"]: im["file_name"] for im in doc["images"]}
        return [
            Caption(root / files[a["image_id"]], str(a["caption"]), str(a.get("language", default_language)))
            for a in doc["annotations"]
            if a["image_id"] in files
        ]
    with open(annotations, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "caption"} <= set(rows[0]):
        raise DataError(f"{annotations}: the CSV needs the columns path,caption (and optionally language)")
    return [Caption(root / r["path"], r["caption"], r.get("language") or default_language) for r in rows]


def make_tokenizer(spec: str, context_length: int = 77):
    """A callable ``list[str] -> LongTensor (n, context_length)``: a local Hugging Face tokenizer folder (e.g.
    xlm-roberta-base's, through open_clip's ``HFTokenizer``), or an open_clip model name whose tokenizer ships in
    the wheel (``ViT-B-32``: the CLIP BPE). Nothing is downloaded."""
    import open_clip

    if Path(spec).is_dir():
        return open_clip.tokenizer.HFTokenizer(str(spec), context_length=context_length)
    if spec.startswith("hf-hub:") or "/" in spec:
        raise DataError(
            f"tokenizer={spec!r}: give a local tokenizer folder (tokenizer.json, as save_pretrained writes) or an "
            "open_clip model name such as ViT-B-32; tokenizers are not downloaded"
        )
    return open_clip.get_tokenizer(spec, context_length=context_length)


class ImageCaptions(Dataset):
    """``{"image": C x H x W, "text": token ids (context_length,), "meta": {path, caption, language}}``.

    ``languages``: keep only captions in these languages (``None``: all). ``per``: ``caption`` (one sample per
    pair) or ``image`` (one per image, a random caption of it each time; see the module docstring).
    ``tokenizer``: see :func:`make_tokenizer`."""

    def __init__(
        self,
        root: str | Path,
        captions: str | Path,
        in_chans: int = 3,
        tokenizer: str = "ViT-B-32",
        context_length: int = 77,
        languages: Sequence[str] | None = None,
        per: str = "caption",
    ):
        if per not in ("caption", "image"):
            raise DataError(f"per={per!r}: use caption (one sample per pair) or image (one per image)")
        self.root = Path(root)
        pairs = read_captions(captions, self.root)
        if languages is not None:
            found = sorted({c.language for c in pairs})
            pairs = [c for c in pairs if c.language in set(languages)]
            if not pairs:
                raise DataError(f"{captions}: no caption in languages {list(languages)}; it has {found}")
        if not pairs:
            raise DataError(f"{captions} lists no image-caption pairs")
        self.per = per
        groups: dict[Path, list[Caption]] = {}
        for c in pairs:
            groups.setdefault(c.path, []).append(c)
        self.items: list[list[Caption]] = list(groups.values()) if per == "image" else [[c] for c in pairs]
        self.in_chans = in_chans
        self.tokenizer = make_tokenizer(tokenizer, context_length)

    @property
    def languages(self) -> list[str]:
        return sorted({c.language for item in self.items for c in item})

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        return str(self.items[index][0].path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        caption = item[int(torch.randint(len(item), ())) if len(item) > 1 else 0]  # the sample's seeded RNG
        return {
            "image": read_image(caption.path, self.in_chans),
            "text": self.tokenizer([caption.text])[0],
            "meta": {
                "path": str(caption.path.relative_to(self.root)),
                "caption": caption.text,
                "language": caption.language,
            },
        }


def train_bpe_tokenizer(texts: Sequence[str], out_dir: str | Path, vocab_size: int = 4000) -> Path:
    """Train a byte-level BPE tokenizer (``tokenizers``) on ``texts`` and save it as a Hugging Face tokenizer folder
    with XLM-R's special tokens and ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>``) and
    ``<s> ... </s>`` around every text — for a small text tower trained from scratch on captions in any language
    (byte-level: no character is out of vocabulary), with :func:`make_tokenizer` (``tokenizer=<out_dir>``)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=specials)
    bpe._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,
    )
    out_dir = Path(out_dir)
    fast.save_pretrained(str(out_dir))
    return out_dir

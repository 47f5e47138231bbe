"""Backbone features of a dataset, in batches, into memory or a resumable ``.h5`` file.

Preprocessing is the one the weights expect (``model.pretrained_cfg``: input size, channels, mean/std, as
written by ``domainfm export``): each image is resized (shorter side), centre-cropped and normalised. Pooling of
the final-norm tokens: ``cls`` (class token), ``mean`` (mean of the patch tokens, registers excluded, as the
``avgpool`` features of DINOv2's linear evaluation) or ``both`` (``[cls | mean]``).

``.h5`` layout: ``features`` (N, D) float32, ``labels`` (N,) int64 (-1 = unlabeled), ``ids`` (N,) strings,
``valid`` (N,) bool (False for unreadable files); attributes ``pooling``, ``embed_dim``, ``classes`` (JSON),
``backbone``, ``fingerprint`` (weights + preprocessing), ``done`` (rows written) and ``skipped`` (JSON).
Rows are written in dataset order and flushed after each batch, so rerunning the same extraction continues
after the last written batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.backbones.tokens import forward_tokens
from domainfm.data.transforms import ResizeView
from domainfm.engine.runtime import autocast, resolve_device, resolve_precision, resolve_workers
from domainfm.errors import ConfigError, DataError
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

log = logging.getLogger("domainfm")
POOLINGS = ("cls", "mean", "both")
_UNREADABLE = (OSError, ValueError, SyntaxError, RuntimeError, DataError)


@dataclass
class Preprocess:
    """What the weights expect: channels, ``(H, W)`` (``(D, H, W)`` for a 3D backbone), per-channel mean and std."""

    in_chans: int
    size: tuple[int, ...]
    mean: list[float]
    std: list[float]

    @classmethod
    def of(cls, model: nn.Module) -> Preprocess:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        chans, *size = cfg.get("input_size") or (model.patch_embed.proj.in_channels, *model.patch_embed.img_size)
        mean = list(cfg.get("mean") or [0.5] * chans)
        std = list(cfg.get("std") or [0.5] * chans)
        return cls(int(chans), tuple(int(n) for n in size), [float(m) for m in mean], [float(s) for s in std])

    def view(self) -> ResizeView | None:
        """The evaluation view of images; ``None`` for a 3D backbone (a domain's dataset reads its volumes)."""
        return ResizeView(self.size, self.mean, self.std) if len(self.size) == 2 else None

    def to_dict(self) -> dict[str, Any]:
        return {"in_chans": self.in_chans, "img_size": list(self.size), "mean": self.mean, "std": self.std}


def load_eval_backbone(
    source: str, arch: str | None = None, in_chans: int | None = None
) -> tuple[nn.Module, Preprocess]:
    """The backbone (eval mode) and its preprocessing; ``in_chans`` adapts the patch embedding to other data."""
    model = load_backbone(source, in_chans=in_chans, arch=arch).eval()
    return model, Preprocess.of(model)


def check_channels(paths: list[Path], expected: int, source: str, channels: int | None = None) -> int:
    """The channel count to read images with; raises when the data and the weights disagree.

    ``channels`` (``data.channels``) converts images on reading (1: grey, 3: RGB) and is compared instead of
    what the files hold. Up to 16 files spread over the list are inspected.
    """
    from domainfm.evaluation.datasets import image_channels

    if channels is not None:
        if int(channels) != expected:
            raise DataError(
                f"data.channels={channels} but the backbone {source} expects {expected} channel(s); "
                f"set in_chans={channels} to adapt the backbone, or data.channels={expected}"
            )
        return int(channels)
    picks = sorted({int(i) for i in np.linspace(0, len(paths) - 1, min(16, len(paths)))})
    for i in picks:
        found = image_channels(paths[i])
        if found != expected:
            raise DataError(
                f"{paths[i]} has {found} channel(s) but the backbone {source} expects {expected}; "
                f"set in_chans={found} to adapt the backbone's patch embedding, or data.channels={expected} "
                "to convert the images"
            )
    return expected


def pool_tokens(tokens: torch.Tensor, num_prefix: int, pooling: str) -> torch.Tensor:
    """``cls``: first token; ``mean``: mean of the tokens after the ``num_prefix`` prefix tokens; ``both``: both."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r}; choose one of {', '.join(POOLINGS)}")
    if pooling != "mean" and num_prefix == 0:
        raise ConfigError("this backbone has no class token; use pooling=mean")
    mean = tokens[:, num_prefix:].mean(1)
    if pooling == "mean":
        return mean
    return tokens[:, 0] if pooling == "cls" else torch.cat([tokens[:, 0], mean], dim=-1)


def fingerprint(model: nn.Module, preprocess: Preprocess, extra: Any = None) -> str:
    """SHA-1 of the weights and the preprocessing (plus ``extra``, JSON: what else decides the input, e.g. a
    dataset's band normalisation): cached features are reused only for the same inputs."""
    h = hashlib.sha1(json.dumps([preprocess.to_dict(), extra], sort_keys=True).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d buffers too
    return h.hexdigest()


@dataclass
class Features:
    """Extracted features (``valid`` False marks unreadable files, whose rows are zeros)."""

    features: np.ndarray
    labels: np.ndarray
    ids: list[str]
    pooling: str
    embed_dim: int
    classes: list[str] = field(default_factory=list)
    valid: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)

    def pooled(self, pooling: str) -> np.ndarray:
        """The ``cls``, ``mean`` or ``both`` part of the features (from ``both`` any of them)."""
        if pooling == self.pooling:
            return self.features
        if self.pooling != "both":
            raise ConfigError(f"features were extracted with pooling={self.pooling}; {pooling} needs pooling=both")
        d = self.embed_dim
        return self.features[:, :d] if pooling == "cls" else self.features[:, d:]


class _Safe(Dataset):
    """Returns ``{"error": message}`` instead of raising for an unreadable file (or raises with ``strict``)."""

    def __init__(self, dataset: Dataset, start: int, strict: bool):
        self.dataset, self.start, self.strict = dataset, start, strict

    def __len__(self) -> int:
        return len(self.dataset) - self.start

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.start + i
        try:
            return {"image": self.dataset[index]["image"], "index": index}
        except _UNREADABLE as err:
            name = self.dataset.describe(index) if hasattr(self.dataset, "describe") else f"sample {index}"
            if self.strict:
                raise DataError(f"{name}: unreadable ({err}); remove it or set strict=false") from err
            return {"error": f"{name}: {type(err).__name__}: {err}".splitlines()[0], "index": index}


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    good = [s for s in samples if "image" in s]
    return {
        "image": torch.stack([s["image"] for s in good]) if good else None,
        "index": [s["index"] for s in good],
        "errors": [s["error"] for s in samples if "error" in s],
    }


class _H5Sink:
    """The ``.h5`` file being written; opened to continue when it holds the same extraction."""

    def __init__(self, path: Path, n: int, dim: int, meta: dict[str, Any], ids, labels, overwrite: bool):
        import h5py

        self.path = path
        if path.exists():
            with h5py.File(path, "r") as f:
                same = f.attrs.get("fingerprint") == meta["fingerprint"] and f.attrs.get("pooling") == meta["pooling"]
                same = same and len(f["ids"]) == n and [s.decode() for s in f["ids"][:]] == list(ids)
                same = same and np.array_equal(f["labels"][:], np.asarray(labels))
            if not same:
                if not overwrite:
                    raise DataError(
                        f"{path} holds features of another backbone, pooling, dataset or labels; delete it or "
                        "choose another out="
                    )
                path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(path, "a")
        if "features" not in self.file:
            f = self.file
            f.create_dataset("features", (n, dim), dtype="float32", chunks=(max(1, min(n, 1024)), dim))
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
            f.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("valid", data=np.zeros(n, dtype=bool))
            for k, v in meta.items():
                f.attrs[k] = v
            f.attrs["done"] = 0
            f.attrs["skipped"] = "[]"
        self.done = int(self.file.attrs["done"])
        self.skipped: list[str] = json.loads(self.file.attrs["skipped"])

    def write(self, start: int, stop: int, index: list[int], rows: np.ndarray, errors: list[str]) -> None:
        f = self.file
        if len(index):
            f["features"][index[0] : index[-1] + 1] = _scatter(rows, index, index[0], index[-1] + 1)
            valid = f["valid"][start:stop]
            valid[np.asarray(index) - start] = True
            f["valid"][start:stop] = valid
        self.skipped += errors
        f.attrs["skipped"] = json.dumps(self.skipped)
        f.attrs["done"] = stop
        f.flush()

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        return self.file["features"][:], self.file["valid"][:]

    def close(self) -> None:
        self.file.close()


def _scatter(rows: np.ndarray, index: list[int], start: int, stop: int) -> np.ndarray:
    out = np.zeros((stop - start, rows.shape[1]), dtype=np.float32)
    out[np.asarray(index) - start] = rows
    return out


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    out: str | Path | None = None,
    pooling: str = "both",
    batch_size: int = 64,
    num_workers: int | str = "auto",
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    strict: bool = False,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
    desc: str = "extract",
) -> Features:
    """Features of every sample of ``dataset`` (items with ``image``, already preprocessed; the dataset has
    ``ids`` and ``labels`` attributes, ``labels`` may be None). With ``out`` they are written to that ``.h5``
    file, continuing an interrupted extraction of the same backbone and dataset (``overwrite`` replaces a file
    of another one instead of failing). ``meta`` adds attributes (``backbone``, ``classes``, ``fingerprint``)."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r}; choose one of {', '.join(POOLINGS)}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model = model.to(dev).eval()
    n = len(dataset)
    ids = list(getattr(dataset, "ids", range(n)))
    raw = getattr(dataset, "labels", None)
    labels = np.full(n, -1, dtype=np.int64) if raw is None else np.asarray(raw, dtype=np.int64)
    embed_dim = int(model.num_features)
    dim = embed_dim * (2 if pooling == "both" else 1)
    meta = {
        "pooling": pooling,
        "embed_dim": embed_dim,
        "classes": "[]",
        "backbone": "",
        "fingerprint": "",
        **(meta or {}),
    }
    if out is not None:
        sink: Any = _H5Sink(Path(out), n, dim, meta, ids, labels, overwrite)
    else:
        sink = _Memory(n, dim)
    try:
        loader = DataLoader(
            _Safe(dataset, sink.done, strict),
            batch_size=batch_size,
            shuffle=False,
            num_workers=resolve_workers(num_workers, dev),
            collate_fn=_collate,
            pin_memory=dev.type == "cuda",
        )
        start = sink.done
        with tqdm(total=n, initial=start, disable=not progress, desc=desc, unit="img", dynamic_ncols=True) as bar:
            for batch in loader:
                stop = min(n, start + batch_size)
                rows = np.zeros((0, dim), dtype=np.float32)
                if batch["image"] is not None:
                    with autocast(dev, prec):
                        tokens, num_prefix = forward_tokens(model, batch["image"].to(dev, non_blocking=True))
                    rows = pool_tokens(tokens.float(), num_prefix, pooling).cpu().numpy()
                sink.write(start, stop, batch["index"], rows, batch["errors"])
                bar.update(stop - start)
                start = stop
        features, valid = sink.read()
        skipped = list(sink.skipped)
    finally:
        sink.close()
    if skipped:
        log.warning("%d unreadable files skipped, e.g. %s", len(skipped), skipped[0])
    classes = json.loads(meta["classes"]) if isinstance(meta["classes"], str) else list(meta["classes"])
    return Features(features, labels, [str(i) for i in ids], pooling, embed_dim, classes, valid, skipped)


class _Memory:
    def __init__(self, n: int, dim: int):
        self.features = np.zeros((n, dim), dtype=np.float32)
        self.valid = np.zeros(n, dtype=bool)
        self.done, self.skipped = 0, []

    def write(self, start: int, stop: int, index: list[int], rows: np.ndarray, errors: list[str]) -> None:
        self.features[index] = rows
        self.valid[index] = True
        self.skipped += errors

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        return self.features, self.valid

    def close(self) -> None:
        pass


def load_features(path: str | Path) -> Features:
    """Read a features ``.h5`` written by :func:`extract_features` (complete or not: ``valid`` says)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    with h5py.File(path, "r") as f:
        for key in ("features", "labels", "ids"):
            if key not in f:
                raise DataError(f"{path} has no '{key}' dataset; it was not written by 'domainfm extract'")
        valid = f["valid"][:] if "valid" in f else np.ones(len(f["labels"]), dtype=bool)
        return Features(
            f["features"][:],
            f["labels"][:],
            [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][:]],
            str(f.attrs.get("pooling", "cls")),
            int(f.attrs.get("embed_dim", f["features"].shape[1])),
            json.loads(f.attrs.get("classes", "[]")),
            valid,
            json.loads(f.attrs.get("skipped", "[]")),
        )

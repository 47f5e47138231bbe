"""Attention-based multiple-instance learning on bags of features (slides, volumes, patients).

Gated attention of Ilse et al. 2018 ("Attention-based Deep Multiple Instance Learning"), in CLAM's layout
(Lu et al. 2021, ``Attn_Net_Gated``): instances ``h = ReLU(W x)``, attention ``a = softmax_n(w^T (tanh(V h) *
sigmoid(U h)))``, bag embedding ``z = sum_n a_n h_n``, linear classifier on ``z``. ``heads`` attention branches
give ``heads`` bag embeddings, concatenated before the classifier (1 head = the paper). Defaults (CLAM): hidden
256, attention 128, dropout 0.25, Adam(W) lr 2e-4, weight decay 1e-5; bags are padded into batches with a
mask so padding gets no attention; the checkpoint with the lowest validation loss is kept (CLAM's early
stopping criterion). Training runs in the engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from domainfm.engine.trainer import TrainerConfig
from domainfm.errors import DataError
from domainfm.evaluation.training import fit_best, validation_scores
from domainfm.methods.base import Method, StepContext
from torch import nn
from torch.utils.data import Dataset


class GatedAttentionMIL(nn.Module):
    """``forward(x (B, N, D), mask (B, N) bool, True = instance) -> (logits (B, K), attention (B, heads, N))``."""

    def __init__(
        self, in_dim: int, n_classes: int, hidden: int = 256, attn_dim: int = 128, heads: int = 1, dropout: float = 0.25
    ):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Linear(hidden, attn_dim)
        self.attn_u = nn.Linear(hidden, attn_dim)
        self.attn_w = nn.Linear(attn_dim, heads)
        self.classifier = nn.Linear(hidden * heads, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).transpose(1, 2)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        attention = scores.softmax(-1)
        bag = (attention @ h).flatten(1)
        return self.classifier(bag), attention


class ABMIL(Method):
    """Cross-entropy on bag labels; ``model`` is the :class:`GatedAttentionMIL`."""

    def __init__(self, model: GatedAttentionMIL):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        logits, _ = self.model(batch["image"], batch["mask"])
        return {"loss": F.cross_entropy(logits, batch["label"])}

    @torch.no_grad()
    def predict(self, bags: list, batch_size: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
        """Class probabilities ``(B, K)`` and each bag's attention ``(heads, N_i)``."""
        self.eval()
        device = next(self.parameters()).device
        probs, attention = [], []
        for i in range(0, len(bags), batch_size):
            chunk = [torch.as_tensor(np.asarray(b), dtype=torch.float32) for b in bags[i : i + batch_size]]
            batch = collate_bags([{"image": b, "label": 0} for b in chunk])
            logits, att = self.model(batch["image"].to(device), batch["mask"].to(device))
            probs.append(logits.float().softmax(-1).cpu().numpy())
            attention += [a[:, : len(b)].cpu().numpy() for a, b in zip(att, bags[i : i + batch_size])]
        return np.concatenate(probs), attention


class BagSet(Dataset):
    """Bags ``(N_i, D)`` with one label each, as samples ``{"image": (N_i, D), "label": int}``. A bag is an array
    or anything ``np.asarray`` reads (an :class:`H5Bag` is read from its file each time it is drawn)."""

    def __init__(self, bags: list, labels: np.ndarray):
        self.bags = list(bags)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": torch.as_tensor(np.asarray(self.bags[i]), dtype=torch.float32), "label": int(self.labels[i])}


class H5Bag:
    """One slide's ``(N, D)`` features in an ``.h5`` file, read when used (``np.asarray``), so a slide archive
    need not fit in memory (as CLAM, which reads each bag from disk per step)."""

    def __init__(self, path: Path, key: str, shape: tuple[int, int]):
        self.path, self.key, self.shape = Path(path), key, tuple(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as f:
            return np.asarray(f[self.key][:], dtype=dtype or np.float32)


def collate_bags(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad bags to the longest: ``image (B, N_max, D)``, ``mask (B, N_max)``, ``label (B,)``."""
    sizes = [len(s["image"]) for s in samples]
    dim = samples[0]["image"].shape[1]
    image = torch.zeros(len(samples), max(sizes), dim, dtype=samples[0]["image"].dtype)
    mask = torch.zeros(len(samples), max(sizes), dtype=torch.bool)
    for i, s in enumerate(samples):
        image[i, : sizes[i]] = s["image"]
        mask[i, : sizes[i]] = True
    batch = {"image": image, "mask": mask, "label": torch.tensor([int(s["label"]) for s in samples])}
    batch["skipped"] = [x for s in samples for x in s.get("skipped", [])]
    return batch


def bags_from_groups(
    features: np.ndarray, labels: np.ndarray, groups: np.ndarray, splits: np.ndarray
) -> dict[str, tuple[list[str], list[np.ndarray], np.ndarray]]:
    """``{split: (bag names, bags, bag labels)}``: one bag per group; a group must have one label."""
    out: dict[str, tuple[list[str], list[np.ndarray], list[int]]] = {}
    for g in dict.fromkeys(groups):  # first-seen order
        rows = np.flatnonzero(groups == g)
        bag_labels = np.unique(labels[rows])
        if len(bag_labels) != 1:
            raise DataError(f"group {g!r} has samples of {len(bag_labels)} labels; ABMIL needs one label per group")
        names, bags, ys = out.setdefault(str(splits[rows[0]]), ([], [], []))
        names.append(str(g))
        bags.append(features[rows])
        ys.append(int(bag_labels[0]))
    return {s: (n, b, np.asarray(y, dtype=np.int64)) for s, (n, b, y) in out.items()}


def read_bag_files(paths: list[Path], key: str = "features") -> tuple[list[H5Bag | None], list[str]]:
    """An :class:`H5Bag` per ``.h5`` file's ``key`` dataset (N, D) (``domainfm extract`` on slides writes one file
    per slide), checked but not loaded. Unreadable files, files without ``key`` or with no rows give ``None`` and a
    ``"<file>: <why>"`` entry."""
    import h5py

    bags: list[H5Bag | None] = []
    skipped: list[str] = []
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise ValueError(f"no {key!r} dataset (found {sorted(f)})")
                shape = f[key].shape
            if len(shape) != 2 or shape[0] == 0:
                raise ValueError(f"{key!r} has shape {shape}; expected (tiles, dim) with tiles > 0")
        except (OSError, ValueError, KeyError) as e:
            bags.append(None)
            skipped.append(f"{path}: {e}")
            continue
        bags.append(H5Bag(path, key, shape))
    first_of_size: dict[int, Path] = {}
    for path, bag in zip(paths, bags):
        if bag is not None:
            first_of_size.setdefault(bag.shape[1], path)
    if len(first_of_size) > 1:
        (d1, p1), (d2, p2) = list(first_of_size.items())[:2]
        raise DataError(f"{p1} has {d1}-d features, {p2} {d2}-d: extract every slide with the same backbone")
    return bags, skipped


def bags_by_split(
    names: list[str], bags: list[np.ndarray], labels: np.ndarray, splits: np.ndarray
) -> dict[str, tuple[list[str], list[np.ndarray], np.ndarray]]:
    """``{split: (bag names, bags, bag labels)}`` for bags that already are one per row."""
    out = {}
    for s in dict.fromkeys(splits):
        rows = np.flatnonzero(splits == s)
        out[str(s)] = ([names[i] for i in rows], [bags[i] for i in rows], np.asarray(labels[rows], dtype=np.int64))
    return out


def train_abmil(
    train: tuple[list[np.ndarray], np.ndarray],
    val: tuple[list[np.ndarray], np.ndarray],
    n_classes: int,
    run_dir: str | Path,
    hidden: int = 256,
    attn_dim: int = 128,
    heads: int = 1,
    dropout: float = 0.25,
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 2e-4,
    weight_decay: float = 1e-5,
    eval_every: int = 25,
    patience: int = 5,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> tuple[ABMIL, dict[str, Any]]:
    """Train on ``train`` bags, keep the lowest-validation-loss state. Returns the model and what was selected."""
    run_dir = Path(run_dir)
    if run_dir.exists():  # retrained from scratch: stale checkpoints of other features must not be resumed
        shutil.rmtree(run_dir)
    torch.manual_seed(seed)
    model = GatedAttentionMIL(train[0][0].shape[1], n_classes, hidden, attn_dim, heads, dropout)
    method = ABMIL(model)
    cfg = TrainerConfig(
        max_steps=steps,
        seed=seed,
        device=device,
        batch_size=min(batch_size, len(train[0])),
        num_workers=0,
        lr=lr,
        min_lr=lr * 0.01,
        warmup_steps=0.0,
        weight_decay=weight_decay,
        betas=(0.9, 0.999),
        clip_grad=None,
        checkpoint_every=steps,
        keep_last=1,
        log_every=max(1, eval_every),
        progress=progress,
        tensorboard=False,
        eval_every=eval_every,
        patience=patience,
        monitor="val_loss",
        monitor_mode="min",
    )

    def validate(m: ABMIL) -> dict[str, float]:
        return validation_scores(val[1], m.predict(val[0])[0])

    summary, best = fit_best(method, BagSet(*train), run_dir, cfg, validate, collate_fn=collate_bags, desc="abmil")
    return method, {"best_step": best, "steps": summary.steps, "stopped_early": summary.stopped_early}

"""Multistain slide bags for MADELEINE pretraining: a CSV ``slide_id,stain,path[,patient]`` naming each stain's
patch-feature ``.h5`` (``domainfm extract`` on tiled slides: dataset ``features`` (N, D)) of every tissue.

H&E (the first of ``stains``) is the anchor: a tissue without an H&E row is left out (and counted); other stains may
be missing for some tissues. Each sample is one tissue: ``features`` ``(S, n_patches, D)`` float32 (stains in the
order of ``stains``, zeros where one is missing), ``present`` ``(S,)`` bool. ``n_patches`` patches are drawn per
slide from the sample's seed, without replacement, or with replacement when the slide has fewer (MADELEINE's
``sample_n``; 2048 by default)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from domainfm.errors import DataError
from domainfm.evaluation.abmil import H5Bag, read_bag_files
from domainfm.evaluation.datasets import read_table
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".bif", ".vms", ".svslide", ".dcm", ".png", ".jpg")


def stain_key(name: str) -> str:
    """Stains compared without case or punctuation: ``H&E`` = ``HE`` = ``he``, ``Ki-67`` = ``KI67``."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


class MultistainBags(Dataset):
    def __init__(
        self,
        csv: str | Path,
        stains: list[str] | tuple[str, ...],
        root: str | Path | None = None,
        n_patches: int = 2048,
        key: str = "features",
    ):
        csv = Path(csv).expanduser()
        columns, rows = read_table(csv, ("slide_id", "stain", "path"), "needs columns slide_id,stain,path[,patient]")
        self.stains = [str(s) for s in stains]
        index = {stain_key(s): i for i, s in enumerate(self.stains)}
        unknown = sorted({r["stain"] for r in rows if stain_key(r["stain"]) not in index})
        if unknown:
            raise DataError(
                f"{csv}: stains {unknown} are not in data.stains={self.stains}; list every stain with H&E first, "
                f"e.g. data.stains=[{','.join([self.stains[0], *unknown])}]"
            )
        base = Path(root).expanduser() if root else csv.parent
        tissues: dict[str, dict[int, Path]] = {}
        self.patients: dict[str, str] = {}
        for n, r in enumerate(rows, start=2):
            path = Path(r["path"]).expanduser()
            path = path if path.is_absolute() else base / path
            if path.suffix.lower() in SLIDE_SUFFIXES:
                raise DataError(
                    f"{csv} line {n}: {path.name} is a slide; MADELEINE trains on patch features: run domainfm tile "
                    f"and domainfm extract on the slides, then name each slide's features .h5 in the path column"
                )
            stain = index[stain_key(r["stain"])]
            slides = tissues.setdefault(r["slide_id"], {})
            if stain in slides:
                raise DataError(f"{csv} line {n}: slide_id {r['slide_id']} has two {r['stain']} rows")
            slides[stain] = path
            if r.get("patient"):
                self.patients[r["slide_id"]] = r["patient"]
        files = [p for s in tissues.values() for p in s.values()]
        bags, skipped = read_bag_files(files, key)
        bag_of = dict(zip(files, bags))
        self.skipped = skipped
        self.ids: list[str] = []
        self.bags: list[list[H5Bag | None]] = []
        no_anchor = 0
        for slide_id, slides in tissues.items():
            row = [bag_of[slides[k]] if k in slides else None for k in range(len(self.stains))]
            if row[0] is None:
                no_anchor += 1
                continue
            self.ids.append(slide_id)
            self.bags.append(row)
        dims = {b.shape[1] for row in self.bags for b in row if b is not None}
        if not self.bags:
            raise DataError(
                f"{csv}: no tissue has a readable {self.stains[0]} features file ({len(skipped)} unreadable)"
            )
        self.dim = dims.pop()
        self.n_patches = int(n_patches)
        self.no_anchor = no_anchor
        present = np.array([[b is not None for b in row] for row in self.bags])
        counts = ", ".join(f"{s} {int(c)}" for s, c in zip(self.stains, present.sum(0)))
        log.info(
            "%s: %d tissues (%s), %d-d features; %d left out without %s, %d unreadable files",
            csv, len(self.ids), counts, self.dim, no_anchor, self.stains[0], len(skipped),
        )  # fmt: skip
        for line in skipped[:20]:
            log.warning("skipped %s", line)

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self, index: int) -> str:
        return f"tissue {self.ids[index]}"

    def draw(self, bag: H5Bag) -> np.ndarray:
        """``n_patches`` rows of ``bag`` from the global (per-sample seeded) torch RNG."""
        x = np.asarray(bag)
        n = len(x)
        if n >= self.n_patches:
            idx = torch.randperm(n)[: self.n_patches]
        else:
            idx = torch.randint(0, n, (self.n_patches,))
        return x[idx.numpy()]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.bags[index]
        features = np.zeros((len(self.stains), self.n_patches, self.dim), dtype=np.float32)
        for k, bag in enumerate(row):
            if bag is not None:
                features[k] = self.draw(bag)
        present = torch.tensor([b is not None for b in row])
        return {"features": torch.from_numpy(features), "present": present, "meta": {"slide_id": self.ids[index]}}

    def preprocess_info(self, img_size: Any = None) -> dict[str, Any]:
        """What the export records: the patch features' width and the backbone that made them (``domainfm
        extract``'s tag, when the files carry one), and the stains."""
        import json

        import h5py

        info: dict[str, Any] = {"patch_feature_dim": int(self.dim), "stains": list(self.stains)}
        try:
            with h5py.File(self.bags[0][0].path, "r") as f:
                tag = json.loads(f.attrs["domainfm_params"]).get("tag")
            if tag:
                info["patch_encoder"] = str(tag)
        except (OSError, KeyError, ValueError):
            pass
        return info

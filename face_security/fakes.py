"""Blended fakes from real aligned faces, for tests and benchmarks (no real deepfakes ship with domainfm).

Face X-ray-style blending (Li et al. CVPR 2020): the inner face of a donor (skin, brows, eyes, nose, lips, inner
mouth of the LaPa map, eroded and feathered with a Gaussian) is alpha-blended into a target of another identity,
after matching the donor's colour to the target's inside the mask (per-channel mean and std). Both faces are
aligned to the same template by ``domainfm faces``, so no warping is needed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
from domainfm.errors import DataError
from PIL import Image

INNER = (1, 2, 3, 4, 5, 6, 7, 8, 9)  # LaPa skin and facial features


def blend_mask(parsing: np.ndarray, erode: int = 5, feather: float = 4.0) -> np.ndarray:
    """``(H, W)`` float in [0, 1]: the inner face of ``parsing``, eroded by ``erode`` px, feathered (Gaussian sigma)."""
    inner = np.isin(parsing, INNER).astype(np.uint8)
    if erode:
        inner = cv2.erode(inner, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8))
    mask = inner.astype(np.float32)
    if feather:
        mask = cv2.GaussianBlur(mask, (0, 0), feather)
    return np.clip(mask, 0.0, 1.0)


def blend_faces(target: np.ndarray, donor: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``target`` (H, W, 3) uint8 with ``donor``'s face alpha-blended in by ``mask``, colour-matched inside it."""
    t, d = target.astype(np.float32), donor.astype(np.float32)
    inside = mask > 0.5
    if inside.any():
        tm, ts = t[inside].mean(0), t[inside].std(0) + 1e-3
        dm, ds = d[inside].mean(0), d[inside].std(0) + 1e-3
        d = (d - dm) / ds * ts + tm
    out = mask[..., None] * d + (1.0 - mask[..., None]) * t
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def identity_of(row: dict[str, str], by: str = "video") -> str:
    """A face's identity: its ``video`` (one person per video, as in FaceForensics++), or (``by="prefix"``) its
    frame name up to the first ``_`` (one folder of many people, as the London set's ``001_03.jpg``)."""
    return row["frame"].split("_")[0] if by == "prefix" else row["video"]


def blended_fake_set(faces_root: str | Path, out: str | Path, identity: str = "video", seed: int = 0) -> Path:
    """One blended fake per real face of ``faces_root`` (a ``domainfm faces`` output): the face is the target, a
    face of another identity (drawn with ``seed``) the donor. Writes ``out/fakes/*.png`` and ``out/faces.csv``
    with ``path,label,group,video`` for ``domainfm finetune task=deepfake``: ``label`` real | fake, ``group`` the
    target identity (a person's real and fake faces stay in one split), ``video`` per identity and label."""
    faces_root, out = Path(faces_root), Path(out)
    with (faces_root / "faces.csv").open() as f:
        rows = list(csv.DictReader(f))
    ids = [identity_of(r, identity) for r in rows]
    if len(set(ids)) < 2:
        raise DataError(
            f"{faces_root / 'faces.csv'}: blending needs faces of two identities or more (identity={identity})"
        )
    rng = np.random.default_rng(seed)
    (out / "fakes").mkdir(parents=True, exist_ok=True)
    table = []
    for i, (row, who) in enumerate(zip(rows, ids)):
        others = [j for j, other in enumerate(ids) if other != who]
        donor = rows[others[int(rng.integers(len(others)))]]
        target = np.asarray(Image.open(faces_root / row["path"]).convert("RGB"))
        parsing = np.asarray(Image.open(faces_root / row["parsing"]))
        fake = blend_faces(
            target, np.asarray(Image.open(faces_root / donor["path"]).convert("RGB")), blend_mask(parsing)
        )
        name = f"fakes/{i:06d}.png"
        Image.fromarray(fake).save(out / name)
        real = os.path.relpath(faces_root / row["path"], out)
        table += [[Path(real).as_posix(), "real", who, f"{who}/real"], [name, "fake", who, f"{who}/fake"]]
    path = out / "faces.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group", "video"])
        writer.writerows(table)
    return path

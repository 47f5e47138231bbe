"""Per-band statistics of an archive in one streaming pass: mean and standard deviation over every pixel of the
chips read (float64 sums), and 2nd / 98th percentiles from a uniform sample of pixels (at most
``sample_per_chip`` per chip and band). Pixels equal to ``nodata`` are left out."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def band_statistics(
    chips: Iterable[np.ndarray],
    band_names: list[str],
    nodata: float | None = 0,
    sample_per_chip: int = 1024,
    seed: int = 0,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> dict:
    """``{band: {"mean", "std", "p2", "p98", "min", "max", "pixels"}}`` over ``(C, H, W)`` chips."""
    rng = np.random.default_rng(seed)
    C = len(band_names)
    total, total_sq, count = np.zeros(C), np.zeros(C), np.zeros(C, np.int64)
    lo, hi = np.full(C, np.inf), np.full(C, -np.inf)
    samples: list[list[np.ndarray]] = [[] for _ in range(C)]
    n_chips = 0
    for chip in chips:
        n_chips += 1
        flat = np.asarray(chip, np.float64).reshape(C, -1)
        for c in range(C):
            v = flat[c][flat[c] != nodata] if nodata is not None else flat[c]
            if not v.size:
                continue
            total[c] += v.sum()
            total_sq[c] += np.square(v).sum()
            count[c] += v.size
            lo[c], hi[c] = min(lo[c], v.min()), max(hi[c], v.max())
            samples[c].append(v if v.size <= sample_per_chip else rng.choice(v, sample_per_chip, replace=False))
    out = {}
    for c, name in enumerate(band_names):
        if not count[c]:
            out[name] = {"pixels": 0}
            continue
        mean = total[c] / count[c]
        std = float(np.sqrt(max(total_sq[c] / count[c] - mean**2, 0.0)))
        p_lo, p_hi = np.percentile(np.concatenate(samples[c]), percentiles)
        out[name] = {"mean": float(mean), "std": std, f"p{percentiles[0]:g}": float(p_lo),
                     f"p{percentiles[1]:g}": float(p_hi), "min": float(lo[c]), "max": float(hi[c]),
                     "pixels": int(count[c])}  # fmt: skip
    return {"bands": out, "chips": n_chips}


def archive_statistics(chips_dir, max_chips: int = 2000, seed: int = 0, progress: bool = True) -> dict:
    """:func:`band_statistics` of the chips of ``chips_dir`` (``domainfm chips`` output), at most ``max_chips``
    evenly spread over the list, per group of scenes with the same bands (one group for a one-sensor archive)."""
    import csv
    import json
    from pathlib import Path

    from domainfm.remote_sensing.datasets import ChipDataset
    from tqdm.auto import tqdm

    chips_dir = Path(chips_dir)
    with (chips_dir / "chips.csv").open(newline="") as f:
        counts: dict[str, int] = {}
        for row in csv.DictReader(f):
            counts[row["scene"]] = counts.get(row["scene"], 0) + 1
    groups: dict[tuple[str, ...], list[str]] = {}
    for scene in counts:
        info = json.loads((chips_dir / "scenes" / f"{scene}.json").read_text())
        groups.setdefault(tuple(b["name"] for b in info["scene"]["bands"]), []).append(scene)
    out = []
    for names, scenes in groups.items():
        ds = ChipDataset(chips_dir, bands=list(names), scenes=scenes)
        pick = np.unique(np.linspace(0, len(ds) - 1, min(max_chips, len(ds))).round().astype(int))
        chips = (ds[int(i)]["image"].numpy() for i in tqdm(pick, desc="band stats", disable=not progress, leave=False))
        out.append({"names": list(names), "scenes": sorted(scenes), **band_statistics(chips, list(names), seed=seed)})
    return {"groups": out}

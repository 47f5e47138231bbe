"""Synthetic multistain bags with a planted slide-level label, for tests, the demo and the MADELEINE benchmark
(no real multistain archive with slide labels ships with domainfm).

Generative model (ours). Every tissue has a composition over ``n_types`` cell types: the last two share
``pair_mass`` of the patches, type ``T-1`` holding a fraction ``r ~ U(0.1, 0.9)`` of it, the others share the rest
by Dirichlet(``alpha``) (similar tissues); the label is ``r > 0.5``. A patch of stain ``s`` and type ``k`` has the
features ``mu[s, k] + offset[slide] + noise``:

- in H&E the last type has no prototype of its own: its patches lie at ``mu[HE, T-2] +- he_gap u`` (either sign, a
  morphology that straddles its neighbour's), so the *mean* H&E feature of a slide does not depend on ``r`` while
  the spread of those patches does; the first IHC stain (the "marker") gives the type a prototype of its own;
- each slide carries a random offset of scale ``offset`` (scanner, staining batch: large, shared by all its
  patches, independent across the stains of a tissue), and each patch Gaussian noise of scale ``noise``.

What the stains of one tissue share is the composition, whose main variation is ``r`` (the label's factor); the
offsets are not shared. A slide embedding that matches H&E with IHC has to read ``r`` from the spread of the H&E
patches, which their mean does not show.
"""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np


def make_multistain_bags(
    out_dir: str | Path,
    n_tissues: int = 60,
    stains: tuple[str, ...] = ("HE", "MARKER", "IHC2"),
    dim: int = 32,
    patches: tuple[int, int] = (60, 120),
    n_types: int = 6,
    pair_mass: float = 0.4,
    alpha: float = 20.0,
    he_gap: float = 2.0,
    offset: float = 1.5,
    noise: float = 0.5,
    missing: float = 0.1,
    seed: int = 0,
    world_seed: int = 0,
    prefix: str = "T",
) -> tuple[Path, Path]:
    """Write ``<out_dir>/features/<tissue>_<stain>.h5`` (dataset ``features``), ``multistain.csv``
    (``slide_id,stain,path,patient``; each non-H&E stain missing with probability ``missing``) and ``labels.csv``
    (``slide_id,label,group``: the H&E slide's label, one patient per tissue); returns the two CSV paths.
    ``world_seed`` draws the prototypes (keep it to make more tissues of the same world, e.g. a labeled set beside a
    pretraining set), ``seed`` the tissues; ``prefix`` starts the tissue ids."""
    world = np.random.default_rng(world_seed)
    rng = np.random.default_rng([world_seed, seed])
    out = Path(out_dir)
    (out / "features").mkdir(parents=True, exist_ok=True)
    unit = world.normal(size=(len(stains), n_types, dim))
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    mu = 2.0 * unit
    mu[0, -1] = mu[0, -2]  # H&E: the last type straddles the one before (its sign is drawn per patch below)
    rows, labels = [], []
    for t in range(n_tissues):
        y = int(t % 2)
        share = rng.uniform(0.5, 0.9) if y else rng.uniform(0.1, 0.5)
        comp = np.empty(n_types)
        comp[:-2] = (1 - pair_mass) * rng.dirichlet(np.full(n_types - 2, alpha))
        comp[-2], comp[-1] = pair_mass * (1 - share), pair_mass * share
        tissue = f"{prefix}{t:04d}"
        for s, stain in enumerate(stains):
            if s and rng.random() < missing:
                continue
            n = int(rng.integers(patches[0], patches[1] + 1))
            types = rng.choice(n_types, size=n, p=comp)
            shift = rng.normal(size=dim) * offset / np.sqrt(dim)  # norm ~ offset
            x = mu[s, types] + shift[None] + rng.normal(size=(n, dim)) * noise
            if s == 0:  # H&E: +- he_gap along the type's own direction; the mean over its patches stays mu[0, -2]
                last = types == n_types - 1
                x[last] += rng.choice([-1.0, 1.0], size=(int(last.sum()), 1)) * he_gap * unit[0, -1]
            path = out / "features" / f"{tissue}_{stain}.h5"
            with h5py.File(path, "w") as f:
                f.create_dataset("features", data=x.astype(np.float32))
                f.create_dataset("coords", data=np.stack([np.arange(n) * 256, np.zeros(n)], 1).astype(np.int64))
            rows.append((tissue, stain, f"features/{path.name}", f"{prefix}P{t:04d}"))
        labels.append((tissue, "positive" if y else "negative", f"{prefix}P{t:04d}"))
    multistain, label_csv = out / "multistain.csv", out / "labels.csv"
    with multistain.open("w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "stain", "path", "patient"), *rows])
    with label_csv.open("w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "label", "group"), *labels])
    return multistain, label_csv

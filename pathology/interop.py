"""Tile coordinates and patch features in TRIDENT's and CLAM's own layouts, so their tools read ours unchanged.

What their readers need (read in their code: TRIDENT a91fa849, CLAM 53e2409d):

- TRIDENT finds a slide's coordinates only at ``<job>/<mag>x_<ps>px_<ov>px_overlap/patches/<slide>_patches.h5``
  (``Processor.run_patching_job``, ``WSI.py``); its feature step reads ``coords`` and, from ``coords.attrs``,
  ``patch_size`` (pixels at the target magnification), ``level0_magnification`` and ``target_magnification``
  (``WSI.extract_patch_features``); slide encoders read ``features``, ``coords`` and ``patch_size_level0`` from
  ``features_<encoder>/<slide>.h5``. Attributes: ``patch_size``, ``patch_size_level0``, ``level0_magnification``,
  ``target_magnification``, ``overlap``, ``name``, ``savetodir``, ``level0_width``, ``level0_height``; none on the
  file. domainfm's own ``patches/<slide>.h5`` carries the same attributes (TRIDENT skips it only for its name).
- CLAM's ``Whole_Slide_Bag_FP`` reads ``coords`` and ``coords.attrs["patch_level"]`` / ``["patch_size"]`` and
  reads each tile as ``read_region(xy, patch_level, (patch_size, patch_size))``: ``patch_size`` is in pixels *of
  that level* (not of the target MPP, as TRIDENT's and ours), so the CLAM layout names the pyramid level domainfm
  reads the tile from and the tile's side there; ``downsample``, ``downsampled_level_dim``, ``level_dim``,
  ``name``, ``save_path`` as ``create_patches_fp.py`` writes them. Features: ``h5_files/<slide>.h5`` (``features``,
  ``coords``) and ``pt_files/<slide>.pt`` (a float32 tensor), what CLAM's training datasets read.

Writing a layout copies coordinates (and features) into new files; the domainfm outputs are left as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
from domainfm.errors import DataError
from domainfm.pathology.datasets import SlideSource, coords_files, slide_paths
from domainfm.pathology.h5io import atomic_output, read_coords
from domainfm.pathology.slide import open_slide

TRIDENT_ATTRS = ("patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap",
                 "level0_width", "level0_height")  # fmt: skip


def trident_folder(attrs: dict) -> str:
    """``20x_256px_0px_overlap``: TRIDENT's coordinate folder name (magnification without a trailing ``.0``)."""
    mag, size, overlap = float(attrs["target_magnification"]), int(attrs["patch_size"]), int(attrs.get("overlap", 0))
    return f"{mag:g}x_{size}px_{overlap}px_overlap"


def _write(path: Path, datasets: dict[str, np.ndarray], attrs: dict[str, dict]) -> None:
    """Datasets with their own attributes (nothing on the file, as both tools write), atomically."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
            for name, v in attrs.get(key, {}).items():
                f[key].attrs[name] = v


def write_trident_layout(
    coords: str | Path, job_dir: str | Path, features: str | Path | None = None, encoder: str = "domainfm"
) -> list[Path]:
    """``<job_dir>/<mag>x_<ps>px_<ov>px_overlap/patches/<slide>_patches.h5`` for every coordinate file of
    ``coords`` (a ``domainfm tile`` output), and with ``features`` (a ``domainfm extract`` folder)
    ``.../features_<encoder>/<slide>.h5``; returns the coordinate folders written."""
    job_dir = Path(job_dir)
    folders = []
    for h5 in coords_files(coords):
        xy, attrs = read_coords(h5)
        name = str(attrs.get("name", h5.stem))
        folder = job_dir / trident_folder(attrs)
        meta = {k: attrs[k] for k in TRIDENT_ATTRS if k in attrs}
        meta.update(name=name, savetodir=str(folder))
        _write(folder / "patches" / f"{name}_patches.h5", {"coords": xy.astype(np.int64)}, {"coords": meta})
        if features is not None:
            src = Path(features) / f"{name}.h5"
            if not src.is_file():
                raise DataError(f"{src} not found: extract the features of {name} first (domainfm extract)")
            with h5py.File(src, "r") as f:
                feats, fxy = f["features"][:], f["coords"][:]
            out = {"features": {"name": name, "savetodir": str(folder), "encoder": encoder}, "coords": meta}
            _write(folder / f"features_{encoder}" / f"{name}.h5", {"features": feats, "coords": fxy}, out)
        if folder not in folders:
            folders.append(folder)
    return folders


def write_clam_layout(
    coords: str | Path, slides: SlideSource, out_dir: str | Path, features: str | Path | None = None
) -> Path:
    """``<out_dir>/patches/<slide>.h5`` in CLAM's attributes (the level read and the tile's side there), and with
    ``features`` ``<out_dir>/h5_files/<slide>.h5`` + ``pt_files/<slide>.pt``; returns ``out_dir``."""
    import torch

    out_dir = Path(out_dir)
    paths = slide_paths(slides)
    for h5 in coords_files(coords):
        xy, attrs = read_coords(h5)
        name = str(attrs.get("name", h5.stem))
        if name not in paths:
            raise DataError(f"{h5}: slide {name} is not in data.root; CLAM's layout needs each slide's pyramid")
        with open_slide(paths[name], mpp=attrs.get("level0_mpp")) as slide:
            size0 = int(attrs["patch_size_level0"])
            level = slide.best_level(size0 / int(attrs["patch_size"]))
            ds = float(slide.level_downsamples[level])
            dims = np.asarray(slide.level_dimensions[level], dtype=np.int64)
        meta = {
            "patch_level": int(level),
            "patch_size": max(1, round(size0 / ds)),  # the tile's side at patch_level
            "downsample": np.array([ds, ds], dtype=np.float64),
            "downsampled_level_dim": dims,
            "level_dim": dims,
            "name": name,
            "save_path": str(out_dir / "patches"),
        }
        _write(out_dir / "patches" / f"{name}.h5", {"coords": xy.astype(np.int64)}, {"coords": meta})
        if features is not None:
            src = Path(features) / f"{name}.h5"
            if not src.is_file():
                raise DataError(f"{src} not found: extract the features of {name} first (domainfm extract)")
            with atomic_output(out_dir / "h5_files" / f"{name}.h5") as tmp:
                shutil.copyfile(src, tmp)
            with h5py.File(src, "r") as f:
                tensor = torch.from_numpy(np.asarray(f["features"][:], dtype=np.float32))
            with atomic_output(out_dir / "pt_files" / f"{name}.pt") as tmp:
                torch.save(tensor, tmp)
    return out_dir

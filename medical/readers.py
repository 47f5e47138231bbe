"""Read one volume or image, whatever the format, as a canonical (RAS) :class:`~domainfm.medical.volume.Volume`.

- DICOM: a folder holding one series, or one file (:mod:`domainfm.medical.dicom`; a folder with several
  series is an error naming their count: index it with ``domainfm index`` instead).
- NIfTI ``.nii`` / ``.nii.gz``: nibabel (its ``affine``: the sform when set, else the qform, as nibabel
  chooses; ``scl_slope`` / ``scl_inter`` applied). A 4D file (fMRI, DWI) is refused unless ``frame=`` picks one
  volume.
- NRRD ``.nrrd`` / ``.nhdr``: pynrrd; the affine from ``space directions`` (one row per axis) and ``space
  origin`` in the declared ``space`` (LPS or RAS), read from pynrrd's header directly.
- PNG / JPEG / TIFF: Pillow, greyscale, 1 mm pixels, array ``(columns, rows, 1)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from domainfm.errors import DataError
from domainfm.medical.volume import LPS_TO_RAS, Volume

NIFTI = (".nii", ".nii.gz")
NRRD = (".nrrd", ".nhdr")
IMAGES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def volume_format(path: str | Path) -> str:
    """``nifti``, ``nrrd``, ``image``, ``dicom`` (a folder or any other file) for ``path``."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI):
        return "nifti"
    if name.endswith(NRRD):
        return "nrrd"
    if name.endswith(IMAGES):
        return "image"
    return "dicom"


def read_volume(path: str | Path, frame: int | None = None, resample: bool = False) -> Volume:
    """The volume at ``path`` in RAS; see the module docstring. ``resample``: a DICOM series with gaps, irregular
    spacing or tilt on a regular grid."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    kind = volume_format(path)
    if kind == "nifti":
        return read_nifti(path, frame)
    if kind == "nrrd":
        return read_nrrd(path)
    if kind == "image":
        return read_image_volume(path)
    return read_dicom(path, resample)


def _frame(array: np.ndarray, path: Path, frame: int | None) -> np.ndarray:
    if array.ndim <= 3:
        if frame not in (None, 0):
            raise DataError(f"{path}: a 3D volume has no frame {frame}")
        return array if array.ndim == 3 else array[..., None]
    extra = int(np.prod(array.shape[3:]))
    if frame is None:
        raise DataError(
            f"{path}: 4D ({'x'.join(map(str, array.shape))}); give frame=<0..{extra - 1}> to take one volume"
        )
    if not 0 <= frame < extra:
        raise DataError(f"{path}: frame={frame} out of range 0..{extra - 1}")
    return array.reshape(array.shape[:3] + (extra,))[..., frame]


def read_nifti(path: str | Path, frame: int | None = None) -> Volume:
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib / gzip errors
        raise DataError(f"{path}: unreadable NIfTI ({type(err).__name__}: {err})") from err
    return Volume(_frame(array, path, frame), np.asarray(img.affine, float), meta={"format": "nifti"}).canonical()


def read_nrrd(path: str | Path) -> Volume:
    import nrrd

    path = Path(path)
    try:
        array, header = nrrd.read(str(path))  # index order F: array[i, j, k], i the fastest axis
    except Exception as err:  # pynrrd raises NRRDError, ValueError, zlib errors
        raise DataError(f"{path}: unreadable NRRD ({type(err).__name__}: {err})") from err
    space = str(header.get("space", "left-posterior-superior")).lower()
    directions = header.get("space directions")
    if directions is None:
        raise DataError(f"{path}: NRRD without 'space directions'; its voxel geometry is unknown")
    directions = np.asarray([d for d in directions if d is not None and not np.isnan(np.asarray(d, float)).any()])
    if array.ndim != 3 or directions.shape != (3, 3):
        raise DataError(f"{path}: NRRD of {array.ndim} dimensions; a 3D scalar volume is needed")
    affine = np.eye(4)
    affine[:3, :3] = directions.T  # column a = direction of array axis a
    affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), float)
    if space in ("left-posterior-superior", "lps"):
        affine = LPS_TO_RAS @ affine
    elif space not in ("right-anterior-superior", "ras"):
        raise DataError(f"{path}: NRRD space {space!r}; only LPS and RAS are supported")
    return Volume(array, affine, meta={"format": "nrrd"}).canonical()


def read_image_volume(path: str | Path) -> Volume:
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16", "F") else im)
    except Exception as err:  # Pillow raises UnidentifiedImageError, OSError, DecompressionBombError
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err
    return Volume(array.T[..., None].copy(), np.eye(4), meta={"format": "image"})


def read_dicom(path: str | Path, resample: bool = False) -> Volume:
    from domainfm.medical.dicom import Skipped, read_series, read_slices

    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    by_series: dict[str, list] = {}
    skipped: dict[str, int] = {}
    for f in files:
        got = read_slices(f)
        if isinstance(got, Skipped):
            skipped[got.kind] = skipped.get(got.kind, 0) + 1
            continue
        for s in got:
            by_series.setdefault(s.series, []).append(s)
    if not by_series:
        what = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())) or "no files"
        raise DataError(f"{path}: no DICOM image slices ({what})")
    if len(by_series) > 1:
        raise DataError(
            f"{path}: {len(by_series)} DICOM series; read one series folder, or index them all with "
            f"domainfm index data.root={path} out=<folder>"
        )
    ((sid, slices),) = by_series.items()
    volume, _ = read_series(slices, sid, resample=resample)
    return volume

"""DICOM series -> :class:`~domainfm.medical.volume.Volume`: headers, grouping, slice geometry, voxels.

Geometry (DICOM PS3.3 C.7.6.2): row direction ``r`` and column direction ``c`` from ImageOrientationPatient, slice
normal ``n = r x c``; pixel ``(row i, column j)`` of a slice lies at ``ImagePositionPatient + j * dc * r + i * dr *
c`` with PixelSpacing ``[dr, dc]`` (LPS, mm). Slices are sorted by ``ImagePositionPatient . n`` (never by
InstanceNumber, which scanners number in either direction and restart), the slice step is the median position
difference between neighbours, gaps aside (never SliceThickness: slices can overlap or have gaps), and the third
affine column is the actual step between positions, so a gantry-tilted stack keeps its sheared geometry exactly.
Checks on the sorted positions: duplicate positions (several acquisitions, echoes or phases in one series: refused
with the reason), gaps larger than 1.5 steps (missing slices), a spread of steps beyond 1 % (irregular spacing), a
step vector off the normal by more than 0.05 degrees (gantry tilt); each is a warning in the series status, and
``resample=True`` in :func:`read_series` puts such a series on a regular orthogonal grid
(:func:`domainfm.medical.resample.regular_grid`).

Why not monai's / torchio's readers: monai 1.6's ``PydicomReader._combine_dicom_series`` stacks slices in
InstanceNumber order and takes the slice spacing from the third ImagePositionPatient coordinate only (wrong for
sagittal / coronal stacks and for series numbered head to foot); the ITK-based readers (monai ``ITKReader``, torchio
through SimpleITK) build an orthogonal direction and one slice spacing, so a gap or gantry tilt is not reported.
SimpleITK is the test reference for the regular series.

MONOCHROME1 images (CR / DX, 0 = white) are inverted to MONOCHROME2 before the rescale, bitwise within BitsStored,
as GDCM (SimpleITK) does. Enhanced multi-frame CT/MR (one file, per-frame functional groups) is expanded to one
slice per frame; the compressed transfer syntaxes decode through pydicom's pixel handlers (RLE natively, JPEG /
JPEG-LS / JPEG 2000 with ``pylibjpeg``, declared by the medical extra). Rescale slope / intercept apply per slice
(HU for CT). Nothing here returns or logs a patient identifier: series are named by :func:`series_id` only."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from domainfm.errors import DataError
from domainfm.medical.volume import LPS_TO_RAS, Volume, oriented_buffer, ras_affine_from_lps, ras_orientation

log = logging.getLogger("domainfm")

# Objects that carry no image to pretrain on; counted per kind and skipped.
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "REG", "DOC", "RWV", "FID", "PLAN"}
DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR)

# The only elements read from a header (faster on real files with hundreds of elements, and no identifier is ever
# loaded into memory: PatientName, PatientID, dates, accession numbers are not among them).
HEADER_TAGS = [
    "SOPClassUID", "Modality", "SeriesInstanceUID", "BodyPartExamined", "Rows", "Columns", "InstanceNumber",
    "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "NumberOfFrames",
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "PixelSpacing", "ImagerPixelSpacing",
    "ImagePositionPatient", "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept", "DirectoryRecordSequence",
]  # fmt: skip

TILT_DEGREES = 0.05
IRREGULAR_FRACTION = 0.01
MISSING_FACTOR = 1.5


def series_id(series_uid: str) -> str:
    """The opaque id of a series: 16 hex digits of SHA-256 over its SeriesInstanceUID (UIDs are identifiers)."""
    return hashlib.sha256(series_uid.encode()).hexdigest()[:16]


@dataclass
class Slice:
    """One 2D frame of a DICOM file (``frame`` >= 0 in an enhanced multi-frame file, else -1)."""

    path: str
    frame: int
    series: str  # opaque series id
    modality: str
    body_part: str
    rows: int
    cols: int
    position: np.ndarray | None  # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray | None  # ImageOrientationPatient (6)
    pixel_spacing: tuple[float, float] | None  # (row spacing dr, column spacing dc)
    slope: float = 1.0
    intercept: float = 0.0
    instance: int = 0
    samples: int = 1
    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    signed: bool = False
    bits_allocated: int = 16
    raw_pixels: tuple[int, int] | None = None  # (file offset, byte length) of native little-endian pixel data


@dataclass
class Skipped:
    """A file that is not an image slice: ``kind`` is a non-image modality, ``DICOMDIR``, ``not DICOM`` or
    ``unreadable``; ``reason`` says why."""

    path: str
    kind: str
    reason: str = ""


@dataclass
class Geometry:
    """The sorted slices of one series and what was found on their positions."""

    slices: list[Slice]
    affine: np.ndarray  # RAS affine of the (j, i, k) voxel array
    steps: np.ndarray  # position differences along the normal (mm)
    warnings: list[str] = field(default_factory=list)
    tilt_degrees: float = 0.0
    missing: int = 0
    step: float = 1.0  # slice step along the normal (mm): the median of the steps below 1.5 x the smallest

    @property
    def regular(self) -> bool:
        return not self.warnings


def _floats(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    out = np.asarray([float(v) for v in value], dtype=float)
    return out if out.size == n else None


def _functional(ds, per_frame, sequence: str, attribute: str):
    """An attribute of a functional group: the frame's own, else the shared one."""
    for groups in (per_frame, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if groups is not None and sequence in groups and groups[sequence]:
            value = groups[sequence][0].get(attribute)
            if value is not None:
                return value
    return None


def read_slices(path: str | Path) -> list[Slice] | Skipped:
    """The image slices of one file (headers only), or why it has none."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = str(path)
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            raw = _native_pixels_at(fp, ds)
    except InvalidDicomError:
        return Skipped(path, "not DICOM", "no DICOM preamble / header")
    except (OSError, ValueError, EOFError, AttributeError, KeyError, TypeError) as err:
        return Skipped(path, "unreadable", f"{type(err).__name__}: {' '.join(str(err).split())[:200]}")
    sop = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", ""))
    if sop == DIRECTORY_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return Skipped(path, "DICOMDIR")
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return Skipped(path, modality, "not an image object")
    if "Rows" not in ds or "Columns" not in ds:
        from pydicom.uid import UID

        if "Image Storage" in UID(sop).name:  # an image object whose header stops early: a cut file
            return Skipped(path, "unreadable", "image header incomplete (no Rows/Columns): truncated file?")
        return Skipped(path, modality or "no image", "no pixel matrix (Rows/Columns)")
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not uid:
        return Skipped(path, "unreadable", "no SeriesInstanceUID")
    common = dict(
        path=path,
        series=series_id(uid),
        modality=modality,
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        instance=int(ds.get("InstanceNumber") or 0),
        samples=int(ds.get("SamplesPerPixel") or 1),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        bits_stored=int(ds.get("BitsStored") or 16),
        bits_allocated=int(ds.get("BitsAllocated") or 16),
        signed=bool(int(ds.get("PixelRepresentation") or 0)),
    )
    frames = int(ds.get("NumberOfFrames") or 1)
    common["raw_pixels"] = raw if raw is not None and raw[1] == _native_size(common, frames) else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frames > 1 and per_frame:  # enhanced multi-frame
        out = []
        for f, groups in enumerate(per_frame):
            slope = _functional(ds, groups, "PixelValueTransformationSequence", "RescaleSlope")
            intercept = _functional(ds, groups, "PixelValueTransformationSequence", "RescaleIntercept")
            spacing = _floats(_functional(ds, groups, "PixelMeasuresSequence", "PixelSpacing"), 2)
            out.append(
                Slice(
                    frame=f,
                    position=_floats(_functional(ds, groups, "PlanePositionSequence", "ImagePositionPatient"), 3),
                    orientation=_floats(
                        _functional(ds, groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
                    ),
                    pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
                    slope=float(slope if slope is not None else 1.0),
                    intercept=float(intercept if intercept is not None else 0.0),
                    **common,
                )
            )
        return out
    spacing = _floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"), 2)
    base = Slice(
        frame=-1 if frames == 1 else 0,
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        slope=float(ds.get("RescaleSlope") if ds.get("RescaleSlope") is not None else 1.0),
        intercept=float(ds.get("RescaleIntercept") if ds.get("RescaleIntercept") is not None else 0.0),
        **common,
    )
    if frames == 1:
        return [base]
    return [replace(base, frame=f) for f in range(frames)]  # plain multi-frame: no per-frame positions


NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR little endian


def _native_pixels_at(fp, ds) -> tuple[int, int] | None:
    """Where the pixel values start and how many bytes they take, when ``fp`` (just after a ``stop_before_pixels``
    read, which leaves it at the Pixel Data element) holds them uncompressed in little-endian order; else ``None``."""
    syntax = str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "") or "")
    if syntax not in NATIVE_LITTLE_ENDIAN:
        return None
    head = fp.read(12)
    if len(head) < 8 or head[:4] != b"\xe0\x7f\x10\x00":  # tag (7FE0,0010) Pixel Data, little endian
        return None
    if syntax == NATIVE_LITTLE_ENDIAN[0]:
        start, length = fp.tell() - 4, int.from_bytes(head[4:8], "little")  # implicit VR: tag + 4-byte length
    elif head[4:6] in (b"OB", b"OW") and len(head) == 12:
        start, length = fp.tell(), int.from_bytes(head[8:12], "little")  # explicit VR: tag + VR + 2 + 4-byte length
    else:
        return None
    return (start, length) if length != 0xFFFFFFFF else None


def _native_size(header: dict, frames: int) -> int | None:
    """The byte length of a native stack of single-sample planes (``None`` for other layouts)."""
    bits = header["bits_allocated"]
    if bits not in (8, 16, 32) or header["samples"] != 1 or not 0 < header["bits_stored"] <= bits:
        return None
    return header["rows"] * header["cols"] * frames * bits // 8


def dicomdir_files(path: str | Path) -> list[Path]:
    """The files a DICOMDIR references (pydicom's ``FileSet``), in its record order."""
    from pydicom.fileset import FileSet

    try:
        fs = FileSet(str(path))
    except Exception as err:  # pydicom raises ValueError / AttributeError / KeyError on broken records
        raise DataError(f"{path}: not a readable DICOMDIR ({type(err).__name__}: {err})") from err
    folder = Path(path).parent  # as given (FileSet resolves symlinks; outputs name files relative to this)
    return [folder / Path(instance.path).relative_to(Path(path).resolve().parent) for instance in fs]


def series_geometry(slices: list[Slice], name: str = "series") -> Geometry:
    """Sort ``slices`` of one series by position along the normal and build the affine; raises
    :class:`~domainfm.errors.DataError` (one line, the reason) when they cannot form one volume."""
    shapes = {(s.rows, s.cols, s.samples) for s in slices}
    if len(shapes) > 1:
        raise DataError(f"{name}: slices of {len(shapes)} different sizes {sorted(shapes)}; not one volume")
    if any(s.pixel_spacing is None for s in slices):
        raise DataError(f"{name}: no PixelSpacing; cannot place the voxels")
    if len(slices) == 1 and slices[0].orientation is None:  # a projection image (CR / DX): no 3D placement
        dr, dc = slices[0].pixel_spacing  # array (columns, rows, 1), kept as stored (no flip to RAS)
        return Geometry(list(slices), np.diag([dc, dr, 1.0, 1.0]), np.zeros(0))
    if any(s.orientation is None or s.position is None for s in slices):
        raise DataError(f"{name}: slices without ImagePositionPatient / ImageOrientationPatient")
    orientations = np.stack([s.orientation for s in slices])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        n = len(np.unique(orientations.round(4), axis=0))
        raise DataError(
            f"{name}: slices have {n} different orientations (a localizer or radial series); not one volume"
        )
    r, c = orientations[0][:3], orientations[0][3:]
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    normal = np.cross(r, c)
    positions = np.stack([s.position for s in slices])
    along = positions @ normal
    order = np.lexsort((np.array([s.instance for s in slices]), along))
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    dr, dc = slices[0].pixel_spacing
    warnings: list[str] = []
    steps = np.diff(along)
    if len(slices) == 1:  # one slice: unit step along the normal
        return Geometry(slices, ras_affine_from_lps(np.stack([r, c, normal], 1), (dc, dr, 1.0), positions[0]), steps)
    if steps.min() < 1e-3:
        dup = int((steps < 1e-3).sum())
        raise DataError(
            f"{name}: {dup} slice(s) share a position with another (several acquisitions, echoes or phases in "
            "one series); not one volume"
        )
    step = float(np.median(steps[steps < MISSING_FACTOR * steps.min()]))  # the step between neighbours, gaps aside
    missing = int(sum(int(round(s / step)) - 1 for s in steps if s > MISSING_FACTOR * step))
    if missing:
        warnings.append(
            f"missing slices: about {missing} gap slice(s) (largest gap {steps.max():.2f} mm, step {step:.2f} mm)"
        )
    elif np.abs(steps - step).max() > IRREGULAR_FRACTION * step:
        warnings.append(f"irregular spacing: steps {steps.min():.3f}-{steps.max():.3f} mm")
    step_vector = (positions[-1] - positions[0]) / float(along[-1] - along[0]) * step
    cos = float(np.clip(step_vector @ normal / np.linalg.norm(step_vector), -1, 1))
    tilt = float(np.degrees(np.arccos(cos)))
    if tilt > TILT_DEGREES:
        warnings.append(f"gantry tilt {tilt:.2f} degrees (sheared grid)")
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = r * dc, c * dr, step_vector
    affine[:3, 3] = positions[0]
    tilt = tilt if tilt > TILT_DEGREES else 0.0
    return Geometry(slices, LPS_TO_RAS @ affine, steps, warnings, tilt, missing, step)


def read_pixels(slices: Iterable[Slice], orientation: np.ndarray | None = None) -> np.ndarray:
    """The rescaled pixels of ``slices`` as ``(cols, rows, n)`` (``(j, i, k)``): int16 / int32 when every slice's
    rescale is integer and the values fit, else float32. One pass: each file's planes are decoded, rescaled into the
    output and dropped (an int16 output is widened to int32 once if a later plane does not fit).
    ``orientation`` (nibabel's transform, e.g. to RAS): the planes are written straight into the reoriented array
    (no second copy of the volume)."""
    slices = list(slices)
    integer = all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in slices)
    dtype = np.int16 if integer else np.float32
    shape = (slices[0].cols, slices[0].rows, len(slices))
    out, source = oriented_buffer(shape, orientation, dtype)  # a plane's transpose is one block of memory
    for k, (plane, s) in enumerate(_stored_planes(slices)):
        if dtype == np.int16:
            ends = [v * s.slope + s.intercept for v in (float(plane.min()), float(plane.max()))]
            if min(ends) < -32768 or max(ends) > 32767:  # widen what is written so far, once
                dtype = np.int32
                wider, wider_source = oriented_buffer(shape, orientation, dtype)
                wider_source[:, :, :k] = source[:, :, :k]
                out, source = wider, wider_source
        dest = source[:, :, k]
        if integer and s.slope == 1 and np.can_cast(plane.dtype, dtype):  # CT's usual rescale: copy, then shift
            dest[...] = plane.T
            if s.intercept:
                dest += int(s.intercept)  # the plane's ends fit the output type: this cannot wrap
        elif integer:
            dest[...] = (plane.astype(np.int64) * int(s.slope) + int(s.intercept)).T
        else:
            dest[...] = (plane.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)).T
    return out


def _stored_planes(slices: list[Slice]):
    """``(plane, slice)`` in order: the stored values (MONOCHROME1 inverted), one file decoded at a time. Native
    little-endian single-sample pixel data is read by hand: one ``np.fromfile`` at the offset the header read found
    (pydicom's ``pixel_array(path)`` would parse every header a second time, a third of the load time), the bits
    above BitsStored cleared as pydicom's ``_correct_unused_bits`` does; everything else (compressed, big endian,
    deflated) is decoded by pydicom's ``pixel_array``."""
    from pydicom.pixels import pixel_array

    cache: dict[str, np.ndarray] = {}
    for s in slices:
        if s.samples > 1:
            raise DataError(f"series {s.series}: colour ({s.samples} samples per pixel) slices are not volumes")
        if s.path not in cache and s.raw_pixels is not None:  # no second parse of the header
            offset, length = s.raw_pixels
            dtype = np.dtype(f"<{'i' if s.signed else 'u'}{s.bits_allocated // 8}")
            values = np.fromfile(s.path, dtype, count=length // dtype.itemsize, offset=offset)
            if values.size * dtype.itemsize != length:
                raise DataError(f"{s.path}: pixel data cut short ({values.size * dtype.itemsize} of {length} bytes)")
            unused = s.bits_allocated - s.bits_stored
            if unused:  # ignore the bits above BitsStored (sign-extended when signed), as pydicom and GDCM do
                np.left_shift(values, unused, out=values)
                np.right_shift(values, unused, out=values)
            cache = {s.path: values.reshape(-1, s.rows, s.cols) if s.frame >= 0 else values.reshape(s.rows, s.cols)}
        elif s.path not in cache:
            cache = {s.path: pixel_array(s.path)}
        pixels = cache[s.path]
        plane = pixels[s.frame] if s.frame >= 0 and pixels.ndim >= 3 else pixels
        if s.photometric == "MONOCHROME1":  # 0 = white: invert the stored values first, as GDCM / SimpleITK do
            plane = -plane.astype(np.int64) - 1 if s.signed else (1 << s.bits_stored) - 1 - plane.astype(np.int64)
        yield plane, s


def read_series(slices: list[Slice], name: str | None = None, resample: bool = False) -> tuple[Volume, Geometry]:
    """One series as a canonical (RAS) :class:`Volume` and its :class:`Geometry`. ``resample``: a series with
    missing slices, irregular spacing or gantry tilt is put on a regular orthogonal grid; without it such a series
    is read as is (positions kept exactly by the affine for tilt; the status carries the warning)."""
    name = name or (slices[0].series if slices else "series")
    geometry = series_geometry(slices, name)
    if geometry.warnings:
        log.warning("series %s: %s%s", name, "; ".join(geometry.warnings), " (resampled)" if resample else "")
    first = geometry.slices[0]
    meta = {"series": first.series, "body_part": first.body_part}
    if resample and not geometry.regular:
        from domainfm.medical.resample import regular_grid

        volume = Volume(read_pixels(geometry.slices), geometry.affine, first.modality, meta)
        return regular_grid(volume, geometry).canonical(), geometry
    shape = (first.cols, first.rows, len(geometry.slices))
    orientation, affine = ras_orientation(geometry.affine, shape)  # written straight in RAS order
    return Volume(read_pixels(geometry.slices, orientation), affine, first.modality, meta), geometry

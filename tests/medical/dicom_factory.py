"""Synthetic DICOM series written with pydicom, for what no real file in ../shared/data/medical covers (gantry
tilt, gaps, shuffled numbering, enhanced multi-frame, compression, identifiers). Synthetic: say so in each test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# Identifiers a PACS dump carries; the tests grep every file a run writes for each of them.
PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-99812345",
    "PatientBirthDate": "19470313",
    "AccessionNumber": "ACC-7730021",
    "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20240229",
    "SeriesDate": "20240229",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77001",
}


def _base(series_uid: str, rows: int, cols: int, modality: str = "CT", phi: bool = True) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.Modality, ds.SeriesInstanceUID = modality, series_uid
    ds.BodyPartExamined = "CHEST"
    if phi:
        for key, value in PHI.items():
            setattr(ds, key, value)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_series(
    folder: Path,
    volume: np.ndarray,
    positions: np.ndarray,
    orientation=(1, 0, 0, 0, 1, 0),
    pixel_spacing=(0.7, 0.8),
    slope: float = 1.0,
    intercept: float = -1024.0,
    instance_numbers=None,
    slice_thickness: float = 5.0,
    series_uid: str | None = None,
    phi: bool = True,
    transfer_syntax=None,
) -> str:
    """``volume[k, i, j]`` (slice, row, column; stored values) as one file per slice at ``positions[k]`` (LPS)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    n, rows, cols = volume.shape
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, n + 1))
    for k in range(n):
        ds = _base(uid, rows, cols, phi=phi)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = [float(x) for x in positions[k]]
        ds.ImageOrientationPatient = [float(x) for x in orientation]
        ds.PixelSpacing = [float(x) for x in pixel_spacing]
        ds.SliceThickness = slice_thickness
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = volume[k].astype(np.int16).tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        ds.save_as(folder / f"IM{numbers[k]:05d}", enforce_file_format=True)
    return uid


def write_enhanced(path: Path, volume: np.ndarray, positions: np.ndarray, orientation=(1, 0, 0, 0, 1, 0),
                   pixel_spacing=(0.7, 0.8), slope: float = 1.0, intercept: float = -1024.0) -> str:  # fmt: skip
    """An enhanced multi-frame CT: one file, per-frame positions, shared orientation / spacing / rescale."""
    n, rows, cols = volume.shape
    uid = generate_uid()
    ds = _base(uid, rows, cols)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = n
    shared = Dataset()
    orient, measures, transform = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [float(x) for x in orientation]
    measures.PixelSpacing = [float(x) for x in pixel_spacing]
    transform.RescaleSlope, transform.RescaleIntercept = slope, intercept
    shared.PlaneOrientationSequence = [orient]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(n):
        group, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [float(x) for x in positions[k]]
        group.PlanePositionSequence = [plane]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = volume.astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)

"""A synthetic DICOM whole-slide image (VL Whole Slide Microscopy Image, one file per pyramid level, TILED_FULL JPEG
baseline frames) that OpenSlide's DICOM driver opens: there is no DICOM slide in ../shared/data.

What OpenSlide 4.0.1 / libdicom require (checked by removing each in turn): Series and SOP Instance UIDs (files
sharing the series UID in one folder form the slide), ImageType with VOLUME third (levels), Total Pixel Matrix
columns/rows, Rows/Columns (tile size), 8-bit 3-sample pixel description incl. HighBit and PlanarConfiguration,
NumberOfFrames, the WSI SOP class in the file meta header, and a JPEG photometric interpretation that matches the
encoding (Pillow's 4:2:2 YCbCr = YBR_FULL_422). MPP comes from level 0's PixelSpacing. wsidicom also needs the
ImagedVolumeWidth/Height (mm). Patient fields are fake; ``label=True`` adds a LABEL instance (a label image with
the fake patient name burnt in is what real scanners write) that readers must never open.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit, generate_uid
from pydicom.valuerep import DSfloat

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
FAKE_PATIENT = ("Anonymous^Synthetic", "SYNTHETIC-0001")
IMAGE_TYPES = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])


def _frames(image: np.ndarray, tile: int, quality: int) -> list[bytes]:
    """JPEG tiles in row-major order; edge tiles padded with their edge pixels."""
    h, w = image.shape[:2]
    frames = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            part = image[y : y + tile, x : x + tile]
            part = np.pad(part, ((0, tile - part.shape[0]), (0, tile - part.shape[1]), (0, 0)), mode="edge")
            buffer = io.BytesIO()
            Image.fromarray(part).save(buffer, "JPEG", quality=quality, subsampling=1)  # 4:2:2
            frames.append(buffer.getvalue())
    return frames


def write_dicom_wsi(
    folder: Path, levels: list[np.ndarray], mpp: float, tile: int = 256, quality: int = 95, label: bool = False
) -> Path:
    """One ``level<i>.dcm`` per image of ``levels`` (level 0 first, RGB uint8) in ``folder``; the level-0 path."""
    folder.mkdir(parents=True, exist_ok=True)
    if label:
        levels = [*levels, np.full((128, 128, 3), 200, dtype=np.uint8)]
    study, series = generate_uid(), generate_uid()
    width_mm, height_mm = levels[0].shape[1] * mpp / 1000, levels[0].shape[0] * mpp / 1000
    for i, image in enumerate(levels):
        h, w = image.shape[:2]
        frames = _frames(image, tile, quality)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = WSI_SOP_CLASS
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.ImageType = (
            ["ORIGINAL", "PRIMARY", "LABEL", "NONE"] if label and i == len(levels) - 1 else IMAGE_TYPES[min(i, 1)]
        )
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SM", 1, i + 1
        ds.PatientName, ds.PatientID = FAKE_PATIENT
        ds.ContainerIdentifier = "SYNTHETIC-SLIDE"
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = w, h, 1
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = width_mm, height_mm, 0.004  # wsidicom
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.NumberOfFrames, ds.Rows, ds.Columns = len(frames), tile, tile
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        measures = Dataset()
        measures.PixelSpacing = [DSfloat(height_mm / h, auto_format=True), DSfloat(width_mm / w, auto_format=True)]
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.save_as(folder / f"level{i}.dcm", enforce_file_format=True)
    return folder / "level0.dcm"

"""Geometry of every real file in ../shared/data/medical against SimpleITK (the test-only reference): the same
voxels, spacing, direction and origin once both are in RAS; what cannot be one volume is refused with the reason."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from domainfm.errors import DataError
from domainfm.medical.readers import read_volume
from domainfm.medical.volume import ras_affine_from_lps, to_ras


def sitk_ras(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's voxels and LPS geometry, converted independently of our readers: array (x, y, z), RAS."""
    array = sitk.GetArrayFromImage(image).T
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(dim, dim)[:3, :3]
    affine = ras_affine_from_lps(direction, image.GetSpacing()[:3], image.GetOrigin()[:3])
    return to_ras(array, affine) if array.ndim == 3 else (array, affine)


def sitk_series(folder, modality_files=None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = modality_files or max(
        (reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in reader.GetGDCMSeriesIDs(str(folder))), key=len
    )
    reader.SetFileNames([str(n) for n in names])
    return reader.Execute()


def assert_same(ours, array, affine):
    assert ours.orientation == "RAS" and ours.shape == array.shape
    np.testing.assert_array_equal(ours.array, array)
    np.testing.assert_allclose(ours.affine, affine, atol=1e-4)  # spacing, direction and origin at once


def medical_files(shared_data, pattern):
    files = sorted((shared_data / "medical").glob(pattern))
    assert files, pattern
    return files


def test_nifti_and_nrrd_volumes_match_simpleitk(shared_data):
    files = medical_files(shared_data, "*.nrrd") + [shared_data / "medical" / "t1_anatomical.nii"]
    files += medical_files(shared_data, "msd_task04_hippocampus_subset/*/*.nii.gz")  # 60 images + 60 labels
    assert len(files) == 123
    for f in files:
        ours = read_volume(f)
        assert_same(ours, *sitk_ras(sitk.ReadImage(str(f))))
    brain = read_volume(shared_data / "medical" / "brain1_image.nrrd")
    assert brain.spacing == pytest.approx((0.78125, 0.78125, 6.5))  # NRRD space directions, LPS -> RAS


def test_4d_nifti_is_refused_unless_a_frame_is_chosen(shared_data):
    path = shared_data / "medical" / "fmri_4d.nii.gz"
    with pytest.raises(DataError, match=r"fmri_4d.nii.gz: 4D \(128x96x24x2\); give frame=<0..1>"):
        read_volume(path)
    array, affine = sitk_ras(sitk.ReadImage(str(path)))  # (x, y, z, t), the spatial part of the 4D geometry
    ours = read_volume(path, frame=1)
    assert_same(ours, *to_ras(array[..., 1], affine))  # the file is LAS: x flipped once
    with pytest.raises(DataError, match="frame=2 out of range 0..1"):
        read_volume(path, frame=2)


def test_dicom_series_match_simpleitk(shared_data):
    ct = shared_data / "medical" / "ct_3slice_series"
    volume = read_volume(ct)  # the folder's SEG object is skipped
    assert_same(volume, *sitk_ras(sitk_series(ct)))
    assert volume.spacing[2] == pytest.approx(1.0, abs=1e-6)  # from positions; SliceThickness says 1.25
    stored = [pydicom.dcmread(f).pixel_array for f in sorted(ct.glob("0*.dcm"))]
    assert volume.array.min() == min(int(a.min()) for a in stored) - 1024  # RescaleIntercept applied (HU)
    assert read_volume(ct / "02.dcm").shape == (512, 512, 1)
    five = shared_data / "medical" / "dicomdir_tiny" / "98892001" / "CT5N"  # numbered head -> foot
    assert_same(read_volume(five), *sitk_ras(sitk_series(five)))


def test_single_slice_and_projection_dicom(shared_data):
    tiny = shared_data / "medical" / "dicomdir_tiny"
    one = tiny / "98892003" / "MR1" / "15820"  # one axial MR slice: in-plane geometry and voxels as SimpleITK
    array, affine = sitk_ras(sitk.ReadImage(str(one)))
    ours = read_volume(one)
    np.testing.assert_array_equal(ours.array, array)
    np.testing.assert_allclose(ours.affine[:3, :2], affine[:3, :2], atol=1e-4)
    np.testing.assert_allclose(ours.origin, affine[:3, 3], atol=1e-4)
    cr = tiny / "77654033" / "CR1" / "6154"  # computed radiography: a 2D image, stored orientation kept
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(cr)))[0]  # rows x columns
    projection = read_volume(cr)
    assert projection.shape == (reference.shape[1], reference.shape[0], 1)
    np.testing.assert_allclose(projection.array[:, :, 0].T, reference, rtol=1e-6)  # MONOCHROME1 inverted as GDCM


def test_series_that_are_not_one_volume_are_refused_with_the_reason(shared_data):
    tiny = shared_data / "medical" / "dicomdir_tiny"
    with pytest.raises(DataError, match="slices have 7 different orientations"):
        read_volume(tiny / "98892003" / "MR700")  # radial MR
    with pytest.raises(DataError, match="slices have 2 different orientations"):
        read_volume(tiny / "98892001" / "CT2N")  # scout views
    with pytest.raises(DataError, match="3 DICOM series; read one series folder, or index them all"):
        read_volume(tiny / "98892003" / "MR2")
    with pytest.raises(DataError, match="no DICOM image slices"):
        read_volume(shared_data / "medical" / "ct_3slice_series" / "liver_seg.dcm")

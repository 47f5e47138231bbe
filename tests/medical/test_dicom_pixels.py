"""Pixel reading of DICOM series: the hand-read native path (one ``np.fromfile`` at the offset the header read found)
against pydicom's decoder on every real image file of ../shared/data/medical and on synthetic multi-frame and
compressed files (no such real file here); planes written straight into the RAS array against nibabel's
``apply_orientation``; an int16 volume widened once when a later slice does not fit."""

import itertools

import numpy as np
import pydicom
import pytest
from domainfm.medical.dicom import _stored_planes, read_slices
from domainfm.medical.readers import read_volume
from domainfm.medical.volume import oriented_buffer
from nibabel.orientations import apply_orientation
from pydicom.pixels import pixel_array
from pydicom.uid import RLELossless

from tests.medical.dicom_factory import write_enhanced, write_series


def _image_files(shared_data):
    root = shared_data / "medical"
    files = sorted((root / "ct_3slice_series").glob("0*.dcm")) + sorted(
        p for p in (root / "dicomdir_tiny").rglob("*") if p.is_file() and p.parent.name[:2] in ("CR", "CT", "MR")
    )
    assert len(files) >= 30
    return files


def _planes(path):
    slices = read_slices(path)
    return slices, np.stack([plane for plane, _ in _stored_planes(slices)])


def test_hand_read_native_pixels_equal_pydicom_on_every_real_file(shared_data):
    bits = {}
    for path in _image_files(shared_data):
        slices, ours = _planes(path)
        expected = pixel_array(str(path))
        if slices[0].photometric == "MONOCHROME1":  # 0 = white: stored values inverted within BitsStored
            assert not slices[0].signed
            expected = (1 << slices[0].bits_stored) - 1 - expected.astype(np.int64)
        np.testing.assert_array_equal(ours.reshape(expected.shape), expected, err_msg=str(path))
        assert ours.dtype == expected.dtype
        assert slices[0].raw_pixels is not None, path  # every real image file is native little endian
        key = (slices[0].bits_stored, slices[0].bits_allocated)
        bits[key] = bits.get(key, 0) + 1
    assert bits[(12, 16)] == 3 and bits[(16, 16)] >= 25  # 12-bit CR: the unused bits cleared as pydicom does


def test_multiframe_and_compressed_files_read_the_same_either_way(tmp_path):
    """Synthetic: an enhanced multi-frame CT (read by hand) and an RLE-compressed series (pydicom decodes it)."""
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 2000, (4, 6, 5)).astype(np.int16)
    positions = np.stack([np.zeros(4), np.zeros(4), 2.0 * np.arange(4)], 1)
    enhanced = tmp_path / "enhanced.dcm"
    write_enhanced(enhanced, volume, positions)
    slices, planes = _planes(enhanced)
    assert len(slices) == 4 and slices[0].raw_pixels is not None
    np.testing.assert_array_equal(planes, volume)
    write_series(tmp_path / "rle", volume, positions, transfer_syntax=RLELossless)
    files = sorted((tmp_path / "rle").iterdir())
    slices, planes = _planes(files[0])
    assert slices[0].raw_pixels is None
    np.testing.assert_array_equal(planes[0], volume[0])
    np.testing.assert_array_equal(read_volume(tmp_path / "rle").array, read_volume(enhanced).array)


@pytest.mark.parametrize("signed", [True, False])
def test_bits_above_bits_stored_are_cleared_as_pydicom_does(tmp_path, signed):
    """Synthetic: 12 of 16 bits stored, the 4 unused high bits filled with noise (allowed by PS3.5 8.1.1)."""
    noise = np.random.default_rng(3).integers(0, 1 << 16, (1, 6, 5)).astype(np.uint16)
    positions = np.zeros((1, 3))
    write_series(tmp_path / "s", noise.view(np.int16), positions)
    (path,) = (tmp_path / "s").iterdir()
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
    ds.save_as(path)
    slices, planes = _planes(path)
    assert slices[0].raw_pixels is not None and slices[0].bits_stored == 12
    expected = pixel_array(str(path))
    assert (expected.min() < 0) == signed and np.abs(expected).max() < 4096  # pydicom masked and sign-extended
    np.testing.assert_array_equal(planes[0], expected)
    assert planes.dtype == expected.dtype


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_oriented_buffer_equals_nibabel_apply_orientation(order):
    source = np.random.default_rng(1).integers(0, 1000, (3, 4, 5)).astype(np.int16)
    for flips in itertools.product((1, -1), repeat=3):
        transform = np.array([[order[i], flips[i]] for i in range(3)], float)
        out, view = oriented_buffer(source.shape, transform, np.int16)
        for k in range(source.shape[2]):  # filled plane by plane, as the reader does
            view[:, :, k] = source[:, :, k]
        np.testing.assert_array_equal(out, apply_orientation(source, transform))
        assert all(s > 0 for s in out.strides)  # torch.from_numpy needs positive strides


def test_an_int16_volume_is_widened_once_when_a_later_slice_does_not_fit(tmp_path):
    stored = np.random.default_rng(2).integers(-500, 500, (5, 4, 3)).astype(np.int16)
    stored[3, 1, 2] = 32000  # 32000 + 1000 does not fit int16: the fourth slice widens the volume
    positions = np.stack([np.zeros(5), np.zeros(5), np.arange(5.0)], 1)
    write_series(tmp_path / "wide", stored, positions, intercept=1000.0)
    wide = read_volume(tmp_path / "wide")
    assert wide.array.dtype == np.int32
    np.testing.assert_array_equal(wide.array[::-1, ::-1], stored.transpose(2, 1, 0).astype(np.int32) + 1000)
    stored[3, 1, 2] = 0
    write_series(tmp_path / "narrow", stored, positions, intercept=1000.0)
    assert read_volume(tmp_path / "narrow").array.dtype == np.int16

"""DICOM geometry traps no real file in ../shared/data/medical covers, on series written here with pydicom
(synthetic, see dicom_factory.py): slice order from positions (not InstanceNumber), spacing from positions (not
SliceThickness), sagittal stacks, gaps, irregular spacing, gantry tilt, duplicates, enhanced multi-frame,
compressed transfer syntaxes; checked against SimpleITK where it is right and against the analytic geometry."""

import numpy as np
import pytest
import SimpleITK as sitk
from domainfm.errors import DataError
from domainfm.medical.dicom import read_series, read_slices
from domainfm.medical.readers import read_volume
from pydicom.uid import JPEG2000Lossless, RLELossless

from tests.medical.dicom_factory import write_enhanced, write_series
from tests.medical.test_geometry import assert_same, sitk_ras, sitk_series


def stack(n=6, rows=5, cols=4, seed=0):
    return np.random.default_rng(seed).integers(0, 2000, (n, rows, cols)).astype(np.int16)


def slices_of(folder):
    return [s for f in sorted(folder.iterdir()) for s in read_slices(f)]


def test_order_and_spacing_come_from_positions_not_numbers_or_thickness(tmp_path):
    data = stack()
    z = 10.0 - 2.5 * np.arange(6)  # head -> foot
    positions = np.stack([np.full(6, -20.0), np.full(6, 30.0), z], 1)
    shuffled = [4, 1, 6, 2, 5, 3]  # InstanceNumber unrelated to position
    write_series(tmp_path / "ax", data, positions, instance_numbers=shuffled, slice_thickness=5.0)
    ours = read_volume(tmp_path / "ax")
    assert_same(ours, *sitk_ras(sitk_series(tmp_path / "ax")))
    assert ours.spacing == pytest.approx((0.8, 0.7, 2.5))  # (dc, dr, step); SliceThickness 5.0 ignored
    # RAS: the most inferior slice first; its columns (towards patient left) and rows (posterior) reversed
    assert ours.array[:, :, 0].T.tolist() == (data[-1][::-1, ::-1] - 1024).tolist()


def test_sagittal_stack_matches_simpleitk(tmp_path):
    data = stack(n=5, rows=6, cols=7)
    positions = np.stack([1.5 * np.arange(5), np.zeros(5), np.zeros(5)], 1)  # slices along x (left-right)
    write_series(tmp_path / "sag", data, positions, orientation=(0, 1, 0, 0, 0, -1))
    ours = read_volume(tmp_path / "sag")
    assert_same(ours, *sitk_ras(sitk_series(tmp_path / "sag")))
    assert ours.spacing == pytest.approx((1.5, 0.8, 0.7))


def test_gap_and_irregular_spacing_are_reported_and_resampled(tmp_path):
    data = np.stack([np.full((3, 3), 100 * k, np.int16) for k in range(5)])
    z = np.array([0.0, 2.0, 4.0, 8.0, 10.0])  # one slice missing at 6
    write_series(tmp_path / "gap", data, np.stack([np.zeros(5), np.zeros(5), z], 1), intercept=0.0)
    volume, geometry = read_series(slices_of(tmp_path / "gap"), resample=True)
    assert geometry.missing == 1 and "missing slices: about 1 gap slice" in geometry.warnings[0]
    assert volume.spacing == pytest.approx((0.8, 0.7, 2.0)) and volume.shape == (3, 3, 6)
    np.testing.assert_allclose(volume.array[0, 0], [0, 100, 200, 250, 300, 400])  # linear across the gap
    z = np.array([0.0, 2.0, 4.1, 6.0, 8.0])
    write_series(tmp_path / "irr", data, np.stack([np.zeros(5), np.zeros(5), z], 1), intercept=0.0)
    _, geometry = read_series(slices_of(tmp_path / "irr"))
    assert geometry.warnings == ["irregular spacing: steps 1.900-2.100 mm"]


def test_gantry_tilt_is_detected_and_resampled_onto_the_true_positions(tmp_path):
    """Each slice shifted 0.5 mm in y per 2 mm in z (14 degrees): voxel values are a linear function of the world
    position, so the regular grid must hold exactly that function where it is inside the acquired slices."""
    n, rows, cols, dr, dc, step, shift = 6, 12, 5, 1.0, 1.0, 2.0, 0.5
    positions = np.stack([np.zeros(n), shift * np.arange(n), step * np.arange(n)], 1)

    def field(y, z):
        return 10 * y + 3 * z

    data = np.stack(
        [np.asarray([[field(p[1] + i * dr, p[2]) for _ in range(cols)] for i in range(rows)]) for p in positions]
    )
    write_series(tmp_path / "tilt", data.round().astype(np.int16), positions, pixel_spacing=(dr, dc), intercept=0.0)
    slices = slices_of(tmp_path / "tilt")
    raw, geometry = read_series(slices)
    assert geometry.tilt_degrees == pytest.approx(np.degrees(np.arctan(shift / step)), abs=1e-3)
    assert "gantry tilt 14.04 degrees" in geometry.warnings[0]
    world = raw.affine @ np.array([0, 3, 2, 1.0])  # as read, the sheared affine keeps every voxel's position
    assert raw.array[0, 3, 2] == field(-world[1], world[2])  # RAS y = -LPS y
    regular, _ = read_series(slices, resample=True)
    assert np.allclose(regular.direction, np.eye(3), atol=1e-9) and regular.spacing == pytest.approx((1, 1, 2))
    for i, k in [(2, 0), (5, 3), (4, 5), (9, 1)]:  # inside the acquired slices (outside: the minimum)
        x, y, z, _ = regular.affine @ np.array([0, i, k, 1.0])
        assert regular.array[0, i, k] == pytest.approx(field(-y, z), abs=1e-3)


def test_duplicate_positions_are_refused(tmp_path):
    positions = np.zeros((3, 3))
    write_series(tmp_path / "dup", stack(n=3), positions)
    with pytest.raises(DataError, match="2 slice\\(s\\) share a position with another"):
        read_volume(tmp_path / "dup")


def test_enhanced_multiframe_equals_the_single_frame_series(tmp_path):
    data = stack(n=4)
    positions = np.stack([np.zeros(4), np.zeros(4), 3.0 * np.arange(4)[::-1]], 1)
    write_series(tmp_path / "single", data, positions, slope=2.0, intercept=-1000.0)
    write_enhanced(tmp_path / "enh" / "frames.dcm", data, positions, slope=2.0, intercept=-1000.0)
    single, enhanced = read_volume(tmp_path / "single"), read_volume(tmp_path / "enh")
    np.testing.assert_array_equal(enhanced.array, single.array)
    np.testing.assert_allclose(enhanced.affine, single.affine)
    assert single.array.max() == 2 * int(data.max()) - 1000


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_transfer_syntaxes_decode_to_the_same_voxels(tmp_path, syntax):
    data = stack(n=3, rows=64, cols=64)
    positions = np.stack([np.zeros(3), np.zeros(3), np.arange(3.0)], 1)
    write_series(tmp_path / "raw", data, positions)
    write_series(tmp_path / "packed", data, positions, transfer_syntax=syntax)
    np.testing.assert_array_equal(read_volume(tmp_path / "packed").array, read_volume(tmp_path / "raw").array)
    assert sitk.ReadImage(str(next((tmp_path / "packed").iterdir()))).GetSize()[:2] == (64, 64)

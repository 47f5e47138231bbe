"""Image files at full depth: 16-bit (and 16-bit RGB TIFF) images are scaled by their type's range instead of being
clipped by Pillow's convert("L"); a decompression bomb is an unreadable file (skipped, counted, named), with a key
to raise the limit. Synthetic ramps are synthetic; the Sentinel-2 band is a real 16-bit file from ../shared/data."""

from __future__ import annotations

import shutil
import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from domainfm.data.images import read_image
from domainfm.errors import DataError
from PIL import Image

from tests.conftest import TINY, pretrain_in_process


def _ramp16(h=64, w=256) -> np.ndarray:
    return np.tile(np.linspace(0, 65535, w).round().astype(np.uint16), (h, 1))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16bit_grey_ramp_reads_at_full_depth(tmp_path, suffix):
    ramp = _ramp16()
    path = tmp_path / f"ramp{suffix}"
    if suffix == ".png":
        Image.fromarray(ramp).save(path)
    else:
        tifffile.imwrite(path, ramp)
    grey = read_image(path, 1)
    np.testing.assert_allclose(grey[0].numpy(), ramp / 65535.0, atol=1e-7)
    assert abs(float(grey.mean()) - 0.5) < 1e-3 and float((grey == 1).float().mean()) < 0.01  # was 0.997, 99.5 %
    rgb = read_image(path, 3)
    assert rgb.shape == (3, 64, 256) and torch.equal(rgb[0], rgb[2]) and torch.equal(rgb[1], grey[0])


def test_a_real_sentinel2_band_is_not_saturated(shared_data):
    band = next((shared_data / "remote_sensing" / "bigearthnet_s2_examples").rglob("*_B02.tif"))
    raw = tifffile.imread(band)
    assert raw.dtype == np.uint16 and raw.max() > 255
    image = read_image(band, 1)
    np.testing.assert_array_equal(image[0].numpy(), (raw / 65535.0).astype(np.float32))
    clipped = np.asarray(Image.open(band).convert("L")) / 255.0  # what reading through Pillow's L mode gave
    assert clipped.mean() > 0.9 and float(image.mean()) == pytest.approx(raw.mean() / 65535, rel=1e-5)


def test_16bit_rgb_tiff_keeps_its_depth_and_luma_matches_pillows_weights(tmp_path):
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (32, 48, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    image = read_image(tmp_path / "rgb16.tif", 3)
    np.testing.assert_allclose(image.numpy(), np.moveaxis(rgb16, 2, 0) / 65535.0, atol=1e-7)
    grey = read_image(tmp_path / "rgb16.tif", 1)[0].numpy()
    expected = (rgb16 / 65535.0) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(grey, expected, atol=1e-6)


def test_8bit_images_read_as_before(kather_tiles):
    path = next(kather_tiles.rglob("*.tif"))
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB")).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(read_image(path, 3).numpy(), expected.astype(np.float32), atol=0)


def _bomb(path, side=100_000):
    """A PNG whose header claims side x side pixels (a few hundred bytes on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_a_decompression_bomb_is_an_unreadable_file_skipped_and_named(tmp_path, kather_tiles, monkeypatch):
    bomb = _bomb(tmp_path / "bomb.png")
    with pytest.raises(DataError, match=r"bomb.png: .*Raise the limit with data.max_image_pixels=<pixels>"):
        read_image(bomb, 3)
    folder = tmp_path / "images"
    shutil.copytree(kather_tiles / "01_TUMOR", folder)
    shutil.copy(bomb, folder / "huge.png")
    out = pretrain_in_process([f"run_dir={tmp_path / 'run'}", f"data.root={folder}", "trainer.max_steps=2", *TINY])
    assert out["steps"] == 2
    assert len(out["skipped_files"]) == 1 and "huge.png" in out["skipped_files"][0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    from domainfm.commands.common import apply_data_limits
    from omegaconf import OmegaConf

    apply_data_limits(OmegaConf.create({"data": {"max_image_pixels": 10**11}}))
    assert Image.MAX_IMAGE_PIXELS == 10**11
    with Image.open(bomb) as im:  # the header alone (no pixels are decoded here) now passes the check
        assert im.size == (100_000, 100_000)

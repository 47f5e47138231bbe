"""Datasets: image-caption pairs (COCO json / CSV), npz arrays, folder labels."""

import csv
import shutil

import numpy as np
import pytest
from domainfm.data.arrays import NpzImages
from domainfm.data.captions import ImageCaptions
from domainfm.data.folder import ImageFolder
from domainfm.errors import DataError
from domainfm.sample_data import sample_path


def test_captions_from_coco_json_and_csv(tmp_path):
    root = sample_path("rsicd_sample")
    coco = ImageCaptions(root, root / "captions.json", context_length=16)
    assert len(coco) == 5
    sample = coco[0]
    assert sample["image"].shape == (3, 224, 224) and sample["text"].shape == (16,)
    assert sample["text"][0].item() == 49406  # start-of-text token of the CLIP BPE vocabulary
    images = sorted(root.glob("*.jpg"))
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        w.writerows([[p.name, f"caption {i}"] for i, p in enumerate(images)])
    pairs = ImageCaptions(root, tmp_path / "pairs.csv")
    assert len(pairs) == 5 and pairs[2]["meta"]["caption"] == "caption 2"
    (tmp_path / "bad.csv").write_text("file,text\na.jpg,x\n")
    with pytest.raises(DataError, match="bad.csv: the CSV needs the columns path,caption"):
        ImageCaptions(root, tmp_path / "bad.csv")


def test_npz_images_and_channel_check(shared_data):
    npz = shared_data / "medical" / "pneumoniamnist.npz"
    data = NpzImages(npz, key="test_images", labels_key="test_labels", in_chans=1)
    assert len(data) == 624
    s = data[3]
    assert s["image"].shape == (1, 28, 28) and s["image"].min() >= 0.0 and s["image"].max() <= 1.0
    assert s["label"] in (0, 1)
    with np.load(npz) as z:
        assert np.isclose(s["image"][0, 5, 7].item(), z["test_images"][3, 5, 7] / 255.0)
    with pytest.raises(DataError, match="expects 3"):
        NpzImages(npz, key="test_images", in_chans=3)
    with pytest.raises(DataError, match="no array 'nope'"):
        NpzImages(npz, key="nope")


def test_folder_labels_from_first_subfolder(tmp_path, kather_tiles):
    data = ImageFolder(kather_tiles, labels=True)
    assert data.classes[0] == "01_TUMOR" and len(data.classes) == 8
    assert [data.targets.count(i) for i in range(8)] == [3] * 8
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next(kather_tiles.rglob("*.tif")), flat / "a.tif")
    with pytest.raises(DataError, match="one sub-folder per class"):
        ImageFolder(flat, labels=True)

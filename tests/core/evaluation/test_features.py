"""Feature extraction into .h5: values equal a direct forward pass, resume after an interruption, unreadable
files skipped and named, data/weights mismatches reported with both sides."""

import shutil

import h5py
import numpy as np
import pytest
import torch
from domainfm.errors import DataError
from domainfm.evaluation.datasets import ImageList, load_labeled
from domainfm.evaluation.features import (
    check_channels,
    extract_features,
    fingerprint,
    load_eval_backbone,
    load_features,
)
from PIL import Image


class Interrupt(torch.utils.data.Dataset):
    """Wraps a dataset; raises KeyboardInterrupt at one index (once), counts reads."""

    def __init__(self, dataset, at=None):
        self.dataset, self.at, self.reads = dataset, at, []
        self.ids, self.labels = dataset.ids, dataset.labels

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if i == self.at:
            self.at = None
            raise KeyboardInterrupt
        self.reads.append(i)
        return self.dataset[i]


@pytest.fixture(scope="module")
def kather_set(kather_tiles, tiny_export):
    model, pre = load_eval_backbone(str(tiny_export))
    data = load_labeled(kather_tiles)
    return model, pre, data, ImageList.of(data, 3, pre.view())


def test_h5_holds_cls_and_mean_tokens_of_a_direct_forward(tmp_path, kather_set):
    model, pre, data, dataset = kather_set
    assert pre.size == (32, 32) and pre.in_chans == 3 and pre.mean == [0.5] * 3
    out = tmp_path / "f.h5"
    feats = extract_features(model, dataset, out=out, pooling="both", batch_size=5, num_workers=0, progress=False)
    with h5py.File(out) as f:
        assert f["features"].shape == (24, 384) and f["labels"].shape == (24,) and f["ids"].shape == (24,)
        assert f.attrs["done"] == 24
    loaded = load_features(out)
    np.testing.assert_array_equal(loaded.features, feats.features)
    assert loaded.ids == data.ids and (loaded.labels == data.labels).all() and loaded.valid.all()
    with torch.no_grad():
        tokens = model.forward_features(torch.stack([dataset[i]["image"] for i in range(24)]))
    np.testing.assert_allclose(loaded.pooled("cls"), tokens[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(loaded.pooled("mean"), tokens[:, 1:].mean(1).numpy(), atol=1e-5)


def test_interrupted_extraction_resumes_where_it_stopped(tmp_path, kather_set):
    model, pre, data, dataset = kather_set
    meta = {"fingerprint": fingerprint(model, pre)}
    out = tmp_path / "f.h5"
    first = Interrupt(dataset, at=12)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, first, out=out, batch_size=5, num_workers=0, progress=False, meta=meta)
    with h5py.File(out) as f:
        assert f.attrs["done"] == 10
    second = Interrupt(dataset)
    resumed = extract_features(model, second, out=out, batch_size=5, num_workers=0, progress=False, meta=meta)
    assert second.reads == list(range(10, 24))
    whole = extract_features(model, dataset, batch_size=24, num_workers=0, progress=False)
    np.testing.assert_allclose(resumed.features, whole.features, atol=1e-5)
    other = {"fingerprint": "another backbone"}
    with pytest.raises(DataError, match="holds features of another backbone"):
        extract_features(model, dataset, out=out, batch_size=5, num_workers=0, progress=False, meta=other)
    relabeled = Interrupt(dataset)
    relabeled.labels = (np.asarray(dataset.labels) + 1) % 8
    with pytest.raises(DataError, match="pooling, dataset or labels"):
        extract_features(model, relabeled, out=out, batch_size=5, num_workers=0, progress=False, meta=meta)


def test_unreadable_files_are_skipped_and_named(tmp_path, kather_tiles, kather_set):
    model, pre, _, _ = kather_set
    root = tmp_path / "tiles"
    shutil.copytree(kather_tiles, root)
    (root / "01_TUMOR" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    data = load_labeled(root)
    feats = extract_features(model, ImageList.of(data, 3, pre.view()), batch_size=8, num_workers=0, progress=False)
    bad = data.ids.index("01_TUMOR/broken.png")
    assert not feats.valid[bad] and feats.valid.sum() == 24
    assert len(feats.skipped) == 1 and "broken.png" in feats.skipped[0]
    with pytest.raises(DataError, match=r"broken\.png: unreadable"):
        extract_features(model, ImageList.of(data, 3, pre.view()), num_workers=0, progress=False, strict=True)


def test_channel_mismatch_names_data_and_weights(tmp_path, kather_tiles, tiny_export):
    grey = tmp_path / "grey" / "a"
    grey.mkdir(parents=True)
    src = next(kather_tiles.rglob("*.tif"))
    Image.open(src).convert("L").save(grey / "x.png")
    data = load_labeled(tmp_path / "grey")
    with pytest.raises(DataError) as err:
        check_channels(data.paths, 3, str(tiny_export))
    message = str(err.value)
    assert "x.png has 1 channel(s)" in message and f"backbone {tiny_export} expects 3" in message
    assert "in_chans=1" in message and "data.channels=3" in message
    assert check_channels(data.paths, 3, "b", channels=3) == 3
    model, pre = load_eval_backbone(str(tiny_export), in_chans=1)  # the suggested fix adapts the weights
    assert pre.in_chans == 1 and pre.mean == [0.5] and check_channels(data.paths, 1, "b") == 1
    feats = extract_features(model, ImageList.of(data, 1, pre.view()), num_workers=0, progress=False, pooling="cls")
    assert feats.features.shape == (1, 192)

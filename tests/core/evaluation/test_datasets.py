"""Labeled sets from class folders and CSVs; grouped stratified splits that never leak a group."""

import csv

import numpy as np
import pytest
from domainfm.errors import DataError
from domainfm.evaluation.datasets import (
    ImageList,
    check_groups,
    load_labeled,
    save_splits,
    with_splits,
)


def _write_csv(path, rows, header=("path", "label", "group")):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def grouped_csv(tmp_path, eurosat):
    """EuroSAT images with a synthetic 'patient' per pair of images of one class."""
    files = sorted(eurosat.rglob("*.jpg"))
    rows = [
        (f.relative_to(eurosat).as_posix(), f.parent.name, f"{f.parent.name}-p{i // 2}") for i, f in enumerate(files)
    ]
    return _write_csv(tmp_path / "labels.csv", rows)


def test_class_folders(kather_tiles):
    data = load_labeled(kather_tiles)
    assert len(data) == 24 and data.classes[0] == "01_TUMOR" and len(data.classes) == 8
    assert np.bincount(data.labels).tolist() == [3] * 8
    sample = ImageList.of(data)[5]
    assert sample["image"].shape == (3, 150, 150) and sample["label"] == data.labels[5]


def test_grouped_stratified_split_keeps_groups_together_and_round_trips(grouped_csv, eurosat, tmp_path):
    data = with_splits(load_labeled(eurosat, grouped_csv), val=0.2, test=0.2, seed=0)
    check_groups(data)
    for g in np.unique(data.groups):
        assert len(set(data.splits[data.groups == g])) == 1
    for split in ("train", "val", "test"):
        per_class = np.bincount(data.labels[data.splits == split], minlength=10)
        assert (per_class > 0).all(), split  # stratified: every class in every split
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    assert counts["test"] == 20 and 14 <= counts["val"] <= 26
    again = with_splits(load_labeled(eurosat, grouped_csv), val=0.2, test=0.2, seed=0)
    other = with_splits(load_labeled(eurosat, grouped_csv), val=0.2, test=0.2, seed=1)
    assert (again.splits == data.splits).all() and (other.splits != data.splits).any()
    saved = load_labeled(eurosat, save_splits(data, tmp_path / "splits.csv"))
    assert saved.ids == data.ids and (saved.splits == data.splits).all() and (saved.labels == data.labels).all()
    assert (saved.groups == data.groups).all()


def test_split_column_without_val_gets_val_from_train(tmp_path, eurosat):
    files = sorted(eurosat.rglob("*.jpg"))
    rows = [(f.relative_to(eurosat), f.parent.name, "test" if i % 5 == 0 else "train") for i, f in enumerate(files)]
    data = with_splits(load_labeled(eurosat, _write_csv(tmp_path / "s.csv", rows, ("path", "label", "split"))))
    assert ((np.arange(100) % 5 == 0) == (data.splits == "test")).all()
    assert 5 <= (data.splits == "val").sum() <= 25


def test_numeric_labels_keep_their_order(tmp_path, eurosat):
    files = sorted(eurosat.rglob("*.jpg"))[:3]
    data = load_labeled(
        eurosat,
        _write_csv(
            tmp_path / "g.csv",
            [(f.relative_to(eurosat), g) for f, g in zip(files, ["10", "9", "2"])],
            ("path", "label"),
        ),
    )
    assert data.classes == ["2", "9", "10"] and data.labels.tolist() == [2, 1, 0]


def test_csv_errors_name_the_file_and_the_fix(tmp_path, eurosat):
    bad = _write_csv(tmp_path / "a.csv", [("x.jpg",)], ("image",))
    with pytest.raises(DataError, match=r"a\.csv: needs a header with columns path,label"):
        load_labeled(None, bad)
    missing = _write_csv(tmp_path / "b.csv", [("nope.jpg", "x")], ("path", "label"))
    with pytest.raises(DataError, match=r"b\.csv: line 2: .*nope\.jpg not found"):
        load_labeled(None, missing)
    one = next(eurosat.rglob("*.jpg"))
    split = _write_csv(tmp_path / "c.csv", [(one, "x", "holdout")], ("path", "label", "split"))
    with pytest.raises(DataError, match=r"c\.csv: line 2: split='holdout'; use train, val or test"):
        load_labeled(None, split)
    with pytest.raises(DataError, match="needs one sub-folder per class"):
        load_labeled(eurosat / "Forest")


def test_tiny_classes_still_split_stratified():
    """3 samples per class (the bundled Kather tiles): every split still gets every class."""
    from domainfm.evaluation.datasets import grouped_stratified_split

    labels = np.repeat(np.arange(8), 3)
    splits = grouped_stratified_split(labels, None, val=0.15, test=0.2, seed=0)
    for name in ("train", "val", "test"):
        assert sorted(set(labels[splits == name])) == list(range(8)), name

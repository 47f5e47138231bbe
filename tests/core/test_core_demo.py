"""The core demo (``domainfm demo core``): SimCLR on the bundled PneumoniaMNIST X-rays, then kNN against random init.
The learning claim itself (disjoint CIs at 150 steps) is measured in docs/benchmarks.md; here: the bundle, a short
run end to end, and the verdict line on hand-made results."""

import csv
from collections import Counter

import numpy as np
from domainfm.commands import demo
from domainfm.sample_data import sample_path
from PIL import Image


def test_the_bundled_xrays_match_their_labels_file():
    root = sample_path(demo.XRAYS)
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert Counter((r["split"], r["label"]) for r in rows) == {
        ("train", "normal"): 388,
        ("train", "pneumonia"): 700,
        ("test", "normal"): 234,
        ("test", "pneumonia"): 390,
    }
    assert all(r["path"] == f"{r['split']}/{r['label']}/{r['path'].rsplit('/', 1)[1]}" for r in rows)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == sorted(r["path"] for r in rows)
    image = np.asarray(Image.open(root / rows[0]["path"]))
    assert image.shape == (28, 28) and image.dtype == np.uint8


def _result(value, lo, hi):
    return {"metrics": {"balanced_accuracy": value}, "ci": {"balanced_accuracy": [lo, hi]}}


def test_the_verdict_says_whether_the_cis_are_disjoint():
    assert demo.verdict(_result(0.81, 0.777, 0.841), _result(0.653, 0.62, 0.689)).startswith(
        "pretraining beats random init (95 % CIs disjoint): kNN balanced accuracy 0.810 [0.777, 0.841] vs 0.653"
    )
    assert demo.verdict(_result(0.70, 0.66, 0.74), _result(0.68, 0.64, 0.72)).startswith(
        "pretraining is ahead of random init, but the 95 % CIs overlap"
    )
    assert demo.verdict(_result(0.60, 0.56, 0.64), _result(0.68, 0.64, 0.72)).startswith(
        "pretraining does not beat random init at this budget"
    )


def test_the_core_demo_runs_end_to_end(tmp_path, capsys):
    out = demo.main(out=str(tmp_path), steps="2", **{"data.batch_size": "16"})
    (pretrained,), (random_init,) = out["results"].values()
    assert pretrained["n"] == random_init["n"] == 624  # the official test split
    assert (tmp_path / "simclr" / "export" / "model.safetensors").is_file()
    assert (tmp_path / "random_init" / "export" / "model.safetensors").is_file()
    assert (tmp_path / "evaluate" / "summary.md").is_file()
    printed = capsys.readouterr().out
    assert "kNN balanced accuracy" in printed
    assert "the same run by hand: domainfm pretrain recipe=core/simclr" in printed

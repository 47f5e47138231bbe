"""The evaluate protocols glued to labeled data: ABMIL bags from CSV groups, protocol names, errors."""

import csv

import numpy as np
import pytest
from domainfm.errors import ConfigError
from domainfm.evaluation.datasets import ImageList, load_labeled, with_splits
from domainfm.evaluation.features import extract_features, load_eval_backbone
from domainfm.evaluation.protocols import check_protocols, run_protocols

SETTINGS = {
    "pooling": "mean",
    "seed": 0,
    "device": "cpu",
    "progress": False,
    "metrics": {"bootstrap": 20, "seed": 0},
    "knn": {"k": 5, "temperature": 0.07},
    "abmil": {
        "hidden": 16,
        "attn_dim": 8,
        "heads": 2,
        "dropout": 0.0,
        "steps": 10,
        "batch_size": 4,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "eval_every": 5,
        "patience": 0,
    },
}


@pytest.fixture(scope="module")
def slides(tmp_path_factory, eurosat, tiny_export):
    """EuroSAT images grouped into synthetic 'slides' of 5 images of one class (2 per class)."""
    folder = tmp_path_factory.mktemp("slides")
    files = sorted(eurosat.rglob("*.jpg"))
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group"])
        writer.writerows(
            (p.relative_to(eurosat), p.parent.name, f"{p.parent.name}-{i // 5}") for i, p in enumerate(files)
        )
    data = with_splits(load_labeled(eurosat, folder / "labels.csv"), val=0.25, test=0.25, seed=0)
    model, pre = load_eval_backbone(str(tiny_export))
    feats = extract_features(model, ImageList.of(data, 3, pre.view()), num_workers=0, progress=False)
    return data, feats


def test_abmil_and_knn_on_groups(tmp_path, slides):
    data, feats = slides
    results = run_protocols(feats, data, ["knn", "abmil"], SETTINGS, tmp_path)
    knn, abmil = results
    assert knn.protocol == "knn" and knn.scores["n"] == int((data.splits == "test").sum())
    test_groups = set(data.groups[data.splits == "test"])
    assert abmil.protocol == "abmil" and abmil.scores["n"] == len(test_groups)
    assert abmil.details["bags"]["train"] + abmil.details["bags"]["val"] + len(test_groups) == 20
    assert abmil.details["best_step"] in (5, 10) and (tmp_path / "abmil" / "checkpoints" / "best.pt").exists()
    np.testing.assert_allclose(abmil.probs.sum(1), 1.0, rtol=1e-5)


def test_abmil_without_groups_and_unknown_protocols_fail_with_the_fix(tmp_path, slides):
    data, feats = slides
    from dataclasses import replace

    with pytest.raises(ConfigError, match="protocol=abmil needs bags: add a group column"):
        run_protocols(feats, replace(data, groups=None), ["abmil"], SETTINGS, tmp_path)
    assert check_protocols(["all"]) == ["knn", "linear", "fewshot"]
    with pytest.raises(ConfigError, match="protocol='probe' is unknown; choose from knn, linear, svm, fewshot"):
        check_protocols(["probe"])


def test_svm_probe_is_linear_svc_with_c_chosen_on_validation():
    """Synthetic separable-with-noise features: the probe equals scikit-learn's LinearSVC at the C the validation
    split picks, its scores are a softmax of the decision values, and test never decides C."""
    from domainfm.evaluation.linear import svm_probe
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 2
    y = rng.integers(0, 3, 300)
    x = centres[y] + rng.normal(size=(300, 8)) * 1.5
    tr, va = slice(0, 200), slice(200, 300)
    model, info = svm_probe((x[tr], y[tr]), (x[va], y[va]), 3, Cs=[1e-4, 1e-2, 1.0])
    expected = {}
    for C in (1e-4, 1e-2, 1.0):
        svc = LinearSVC(C=C, max_iter=10000).fit(x[tr], y[tr])
        expected[C] = balanced_accuracy_score(y[va], svc.predict(x[va]))
    assert info["val"] == pytest.approx(expected)
    assert info["C"] == max(expected, key=lambda c: (expected[c], -c))
    probs = model.predict_proba(x[va])
    reference = LinearSVC(C=info["C"], max_iter=10000).fit(x[tr], y[tr])
    assert np.allclose(probs.sum(1), 1) and (probs.argmax(1) == reference.predict(x[va])).all()
    d = reference.decision_function(x[va][:1])[0]
    assert np.allclose(probs[0], np.exp(d - d.max()) / np.exp(d - d.max()).sum())
    binary, _ = svm_probe((x[tr], (y[tr] > 0).astype(int)), (x[va], (y[va] > 0).astype(int)), 2, Cs=[1.0])
    assert binary.predict_proba(x[va]).shape == (100, 2)
    from pathlib import Path

    from domainfm.evaluation.datasets import LabeledSet
    from domainfm.evaluation.features import Features

    ids = [str(i) for i in range(300)]
    splits = np.array(["train"] * 200 + ["val"] * 50 + ["test"] * 50, dtype=object)
    data = LabeledSet([Path(i) for i in ids], ids, y, ["a", "b", "c"], None, splits, source="synthetic")
    feats = Features(x.astype(np.float32), y, ids, "mean", 8, ["a", "b", "c"], np.ones(300, bool), [])
    settings = {**SETTINGS, "svm": {"Cs": [0.01, 1.0], "max_iter": 10000}}
    results = run_protocols(feats, data, ["svm"], settings, "/tmp")
    assert results[0].protocol == "svm" and results[0].details["selected"].startswith("C=")

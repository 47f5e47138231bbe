"""The extract / evaluate / finetune commands on real sample images: evaluate and a user error through the CLI
(subprocess), extract and finetune in-process on the composed Hydra config (same config, no interpreter start)."""

import csv
import json

import h5py
import numpy as np
import pytest
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.evaluation.features import load_features
from domainfm.evaluation.knn import knn_predict
from domainfm.evaluation.metrics import scores
from PIL import Image

from tests.conftest import run_cli
from tests.core.evaluation.conftest import make_export

FAST = ["data.num_workers=0", "progress=false", "metrics.bootstrap=50"]


def run_in_process(name: str, overrides: list[str]):
    """Compose ``core/configs/<name>.yaml`` with the overrides, as the CLI does, and run the command."""
    import importlib

    from domainfm.configsearch import CORE_CONFIGS
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CORE_CONFIGS), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    return importlib.import_module(f"domainfm.commands.{name}").run(cfg)


def test_extract_writes_h5(tmp_path, kather_tiles, tiny_export, capsys):
    out = tmp_path / "feats.h5"
    args = [f"backbone={tiny_export}", f"data.root={kather_tiles}", f"out={out}", "pooling=mean"]
    run_in_process("extract", [*args, "progress=false", "data.num_workers=0"])
    assert f"wrote {out}: 24 x 192 features (mean), 8 classes" in capsys.readouterr().out
    with h5py.File(out) as f:
        assert f["features"].shape == (24, 192) and f.attrs["pooling"] == "mean" and f.attrs["done"] == 24
        assert json.loads(f.attrs["classes"])[0] == "01_TUMOR" and sorted(set(f["labels"][:])) == list(range(8))
        assert f["ids"][0].decode().startswith("01_TUMOR/")


def test_evaluate_compares_backbones_side_by_side(tmp_path, eurosat, tiny_export):
    other = make_export(tmp_path / "runB" / "export", seed=1)
    out = tmp_path / "eval"
    run = run_cli(
        [
            "evaluate",
            f"backbone=[{tiny_export.parent},{other}]",
            f"data.root={eurosat}",
            f"run_dir={out}",
            "protocol=[knn,linear,fewshot]",
            "linear.grid_steps=20",
            "linear.Cs=[1.0]",
            "fewshot.shots=[1,2]",
            "fewshot.episodes=10",
            "report.embedding=pca",
            *FAST,
        ],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    header = next(line for line in run.stdout.splitlines() if line.startswith("| protocol ") and "runB" in line)
    assert "run bal. acc" in header and "runB AUROC" in header
    assert all(f"| {p} " in run.stdout for p in ("knn", "logreg", "linear grid", "fewshot 1-shot", "fewshot 2-shot"))
    payload = json.loads((out / "results.json").read_text())
    assert list(payload["results"]) == ["run", "runB"] and payload["splits"] == {"train": 64, "val": 16, "test": 20}
    assert (out / "summary.md").read_text().count("## run") == 2
    for name in ("run", "runB"):
        assert (out / name / "embedding.png").exists() and (out / name / "knn" / "confusion.png").exists()
        assert (out / name / "linear_grid" / "roc.png").exists()
    # the reported kNN score is the one recomputed from the saved features and splits
    with (out / "splits.csv").open() as f:
        splits = np.array([row["split"] for row in csv.DictReader(f)])
    feats = load_features(out / "runB" / "features.h5")
    x, y = feats.pooled("cls"), feats.labels
    tr, te = splits == "train", splits == "test"
    expected = scores(y[te], knn_predict(x[tr], y[tr], x[te], 10))["balanced_accuracy"]
    knn = next(r for r in payload["results"]["runB"] if r["protocol"] == "knn")
    assert knn["metrics"]["balanced_accuracy"] == expected and knn["n"] == 20


def test_channel_mismatch_is_one_line(tmp_path, kather_tiles, tiny_export):
    for i, src in enumerate(sorted(kather_tiles.rglob("*.tif"))[:6]):
        folder = tmp_path / "grey" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(src).convert("L").save(folder / f"{i}.png")
    run = run_cli(
        [
            "evaluate",
            f"backbone={tiny_export}",
            f"data.root={tmp_path / 'grey'}",
            f"run_dir={tmp_path}/e",
            "split.test=0.34",
            "split.val=0.34",
        ],
        tmp_path,
    )
    assert run.returncode == 2
    err = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "has 1 channel(s) but the backbone" in err[0] and "expects 3" in err[0]


def test_finetune_reports_test_metrics_of_best_checkpoint_and_exports(tmp_path, eurosat, tiny_export, capsys):
    out = tmp_path / "ft"
    run_in_process(
        "finetune",
        [
            f"backbone={tiny_export}",
            f"data.root={eurosat}",
            f"run_dir={out}",
            "trainer.max_steps=4",
            "trainer.eval_every=2",
            "data.batch_size=8",
            "data.num_workers=0",
            "trainer.progress=false",
            "trainer.tensorboard=false",
            "metrics.bootstrap=50",
            "finetune.train_blocks=1",
            "report.embedding=pca",
        ],
    )
    printed = capsys.readouterr().out
    assert "| finetune " in printed and "(val_balanced_accuracy)" in printed
    payload = json.loads((out / "results.json").read_text())
    row = payload["results"]["run"][0]
    assert row["details"]["best_step"] in (2, 4) and row["n"] == 20
    assert (out / "splits.csv").exists() and (out / "config.yaml").exists()
    for name in ("confusion.png", "roc.png", "embedding.png", "loss.png"):
        assert (out / "report" / name).exists()
    model = load_backbone(out / "export")
    assert len(model.blocks) == 2 and tuple(model.pretrained_cfg["input_size"]) == (3, 32, 32)
    # pretrain export -> finetune -> its export -> timm's own loader (a loaded model's cfg used to break it)
    import timm

    again = timm.create_model(f"local-dir:{out / 'export'}", pretrained=True)
    for a, b in zip(again.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    config = json.loads((out / "export" / "config.json").read_text())
    assert "domainfm" not in config["pretrained_cfg"] and config["pretrained_cfg"]["tag"] == "domainfm-finetune"
    assert "- method: supervised finetuning" in (out / "export" / "README.md").read_text()


def _slide_bags(folder, n_slides: int = 40, dim: int = 16, seed: int = 0) -> list[tuple[str, str, str]]:
    """Synthetic per-slide feature files (no labeled slide set is available): Gaussian tiles; a 'tumor' slide has
    3-6 tiles shifted by +3 in the first 4 dimensions. Two slides per patient, one label per patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_slides):
        patient = i // 2
        label = "tumor" if patient % 2 else "normal"
        bag = rng.normal(size=(int(rng.integers(10, 40)), dim)).astype(np.float32)
        if label == "tumor":
            bag[: rng.integers(3, 7), :4] += 3.0
        with h5py.File(folder / f"slide_{i:02d}.h5", "w") as f:
            f["features"], f["coords"] = bag, np.zeros((len(bag), 2), dtype=np.int64)
        rows.append((f"slide_{i:02d}.h5", label, f"patient_{patient:02d}"))
    return rows


def test_abmil_on_per_slide_feature_files(tmp_path, capsys):
    from domainfm.errors import ConfigError

    feats = tmp_path / "features"
    feats.mkdir()
    rows = _slide_bags(feats)
    (feats / "broken.h5").write_bytes(b"not an h5 file")
    with h5py.File(feats / "no_features.h5", "w") as f:
        f["coords"] = np.zeros((3, 2), dtype=np.int64)
    with (tmp_path / "slides.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "group"), *rows, ("broken.h5", "tumor", "p98")])
        csv.writer(f).writerow(("no_features.h5", "normal", "p99"))
    abmil = ["abmil.hidden=32", "abmil.steps=80", "abmil.eval_every=10", "abmil.lr=1e-3", "abmil.dropout=0"]
    args = [f"features={feats}", f"data.csv={tmp_path / 'slides.csv'}", "protocol=abmil", f"run_dir={tmp_path / 'r'}"]
    run_in_process("evaluate", [*args, *abmil, *FAST, "report.plots=false"])
    printed = capsys.readouterr().out
    assert "Skipped 2 unreadable bag files" in printed and "broken.h5" in printed and "no 'features' dataset" in printed
    result = json.loads((tmp_path / "r" / "results.json").read_text())["results"]["features"][0]
    assert result["protocol"] == "abmil" and result["metrics"]["auroc"] > 0.95
    with (tmp_path / "r" / "splits.csv").open() as f:
        splits = {r["path"]: r["split"] for r in csv.DictReader(f)}
    patient_splits = {}
    for path, _, patient in rows:
        patient_splits.setdefault(patient, set()).add(splits[path])
    assert all(len(s) == 1 for s in patient_splits.values())  # a patient's slides never straddle splits
    with (tmp_path / "r" / "predictions.csv").open() as f:
        predictions = list(csv.DictReader(f))
    test_paths = sorted(p for p, s in splits.items() if s == "test" and p not in ("broken.h5", "no_features.h5"))
    assert sorted(r["path"] for r in predictions) == test_paths and result["n"] == len(test_paths)
    assert all(abs(float(r["p_normal"]) + float(r["p_tumor"]) - 1) < 1e-4 for r in predictions)
    # bags are read from their files when drawn, not held in memory
    from domainfm.evaluation.abmil import H5Bag, read_bag_files

    bags, skipped = read_bag_files([feats / "slide_00.h5", feats / "broken.h5"])
    assert isinstance(bags[0], H5Bag) and bags[1] is None and len(skipped) == 1
    with h5py.File(feats / "slide_00.h5") as f:
        np.testing.assert_array_equal(np.asarray(bags[0]), f["features"][:])
        assert bags[0].shape == f["features"].shape and len(bags[0]) == len(f["features"])
    with pytest.raises(ConfigError, match="holds one bag per slide: run it with protocol=abmil"):
        run_in_process("evaluate", [*args[:2], "protocol=knn", f"run_dir={tmp_path / 'r2'}", *FAST])

"""The extract / evaluate / finetune commands on real sample images: evaluate and a user error through the CLI
(subprocess), extract and finetune in-process on the composed Hydra config (same config, no interpreter start)."""

import csv
import json

import h5py
import numpy as np
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

"""``domainfm finetune task=deepfake``: real London faces through ``domainfm faces``, blended fakes made from them
(no real deepfakes ship with domainfm; see ``face_security/fakes.py``), splits grouped by identity, frame- and
video-level scores checked against a recomputation from ``test_scores.csv``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe")

from domainfm.errors import DataError  # noqa: E402
from domainfm.face_security.faces import FaceParams, extract_faces  # noqa: E402
from domainfm.face_security.fakes import blended_fake_set  # noqa: E402
from domainfm.face_security.metrics import eer  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from tests.conftest import compose  # noqa: E402
from tests.core.evaluation.conftest import make_export  # noqa: E402

LONDON = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces" / "face_research_lab_london_256"


@pytest.fixture(scope="module")
def fake_set(tmp_path_factory):
    """12 real faces of 6 identities (neutral + smiling) and one blended fake each."""
    root = tmp_path_factory.mktemp("deepfake")
    src = root / "in"
    src.mkdir()
    for who in ("001", "002", "003", "004", "005", "006"):
        for expression in ("neutral", "smiling"):
            path = next((LONDON / expression).glob(f"{who}_*.jpg"))
            (src / path.name).write_bytes(path.read_bytes())
    summary = extract_faces(src, root / "faces", FaceParams(size=64), workers=1, progress=False)
    assert summary.faces == 12
    return blended_fake_set(root / "faces", root / "fakes", identity="prefix", seed=0)


def test_fake_set_pairs_each_real_face_with_a_fake_of_another_identity(fake_set):
    rows = list(csv.DictReader(fake_set.open()))
    assert len(rows) == 24 and {r["label"] for r in rows} == {"real", "fake"}
    assert all((fake_set.parent / r["path"]).is_file() for r in rows)
    assert {r["video"] for r in rows if r["group"] == "003"} == {"003/real", "003/fake"}


def test_finetune_task_deepfake_reports_frame_and_video_scores(fake_set, tmp_path):
    from domainfm.commands import finetune

    backbone = make_export(tmp_path / "backbone" / "export")
    out = tmp_path / "ft"
    cfg = compose(
        "finetune",
        ["task=deepfake", f"backbone={backbone}", f"data.csv={fake_set}", f"run_dir={out}", "trainer.max_steps=2",
         "trainer.eval_every=2", "data.batch_size=4", "data.num_workers=0", "trainer.progress=false",
         "trainer.tensorboard=false", "metrics.bootstrap=20", "report.plots=false", "split.val=0.33",
         "split.test=0.34"],
    )  # fmt: skip
    finetune.run(cfg)
    splits = list(csv.DictReader((out / "splits.csv").open()))
    split_of = {}
    for r in splits:  # a person's real and fake faces stay in one split
        assert split_of.setdefault(r["group"], r["split"]) == r["split"]
    frame_row, video_row = json.loads((out / "results.json").read_text())["results"]["backbone"]
    assert (frame_row["protocol"], video_row["protocol"]) == ("finetune", "finetune, per video")
    scores = list(csv.DictReader((out / "test_scores.csv").open()))
    assert len(scores) == frame_row["n"] == sum(r["split"] == "test" for r in splits)
    labels = np.array([r["label"] == "real" for r in scores], dtype=int)
    p_real = np.array([float(r["p_real"]) for r in scores])
    assert frame_row["metrics"]["auroc"] == pytest.approx(roc_auc_score(labels, p_real), abs=1e-6)
    assert frame_row["details"]["eer"] == pytest.approx(eer(labels, p_real), abs=1e-6)
    videos = sorted({r["video"] for r in scores})
    v_score = [p_real[[r["video"] == v for r in scores]].mean() for v in videos]
    v_label = [int(v.endswith("/real")) for v in videos]
    assert video_row["n"] == len(videos) == video_row["details"]["videos"]
    assert video_row["metrics"]["auroc"] == pytest.approx(roc_auc_score(v_label, v_score), abs=1e-5)
    assert video_row["details"]["eer"] == pytest.approx(eer(v_label, v_score), abs=1e-5)


def test_deepfake_task_needs_two_classes(tmp_path):
    from domainfm.commands import finetune

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "rows.csv").write_text("path,label\na.png,real\na.png,fake\na.png,unsure\n")
    cfg = compose("finetune", ["task=deepfake", "backbone=x", f"data.csv={tmp_path / 'rows.csv'}",
                               f"run_dir={tmp_path / 'out'}"])  # fmt: skip
    with pytest.raises(DataError, match=r"task=deepfake needs exactly two classes .*\['fake', 'real', 'unsure'\]"):
        finetune.run(cfg)


def test_deepfake_finetuning_defaults_to_fsfms_regularisers():
    from domainfm.face_security.commands.deepfake import with_fsfm_regularisers

    from tests.conftest import compose

    cfg = compose("finetune", ["task=deepfake", "backbone=x", "data.csv=y.csv", "finetune.cutmix=0"])
    out = with_fsfm_regularisers(cfg)
    assert (out.finetune.mixup, out.finetune.cutmix, out.finetune.erase) == (0.8, 0, 0.25)  # README: --mixup 0.8 ...
    assert cfg.finetune.mixup is None  # the caller's config is not changed

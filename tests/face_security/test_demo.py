"""The face-security demo (``domainfm demo face_security``) at a few steps on 6 of its 40 bundled people (real
London photos, CC BY 4.0): faces aligned and parsed, FSFM pretrained with the faces' own normalisation and exported,
blended fakes made, real/fake finetuning for it and its random init with frame- and video-level rows. Whether it
learns: docs/face_security.md and benchmarks/fsfm_quality.py."""

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("mediapipe")

from domainfm.face_security import demo  # noqa: E402


def test_the_demo_goes_from_photos_to_real_fake_results(tmp_path):
    result = demo.main(out=str(tmp_path), steps="2", finetune_steps="2", people="6")
    faces = list(csv.DictReader((tmp_path / "faces" / "faces.csv").open()))
    assert len(faces) == 12 and (tmp_path / "faces" / "overlays.png").is_file()
    summary = json.loads((tmp_path / "faces" / "summary.json").read_text())
    config = json.loads((tmp_path / "fsfm_tiny" / "export" / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == pytest.approx(summary["mean"], abs=1e-4)  # the faces' own statistics
    assert len(Path(result["fakes"]).read_text().splitlines()) == 1 + 24
    assert set(result["results"]) == {"fsfm_tiny", "random_init"}
    for rows in result["results"].values():
        assert [r["protocol"] for r in rows] == ["finetune", "finetune, per video"]
        assert rows[0]["n"] == 2 * rows[1]["n"]  # each test person: a real and a fake "video" of two faces

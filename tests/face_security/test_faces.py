"""Faces pipeline on the real London faces (Face Research Lab London Set, CC BY 4.0; ../shared/data/faces): MediaPipe
landmarks, 5-point alignment, rule-based LaPa parsing, the `domainfm faces` command (videos made here from the
real photographs: no real face videos are shipped), skips, resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mediapipe")

from domainfm.face_security.align import FaceAnalyzer, align_face, five_points, template  # noqa: E402
from domainfm.face_security.faces import FaceParams, extract_faces, list_units, sample_indices  # noqa: E402
from domainfm.face_security.parsing import LAPA, LandmarkParser  # noqa: E402

LONDON = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces" / "face_research_lab_london_256"


def _faces(n: int, folder: str = "neutral") -> list[Path]:
    return sorted((LONDON / folder).glob("*.jpg"))[:n]


@pytest.fixture(scope="module")
def analyzer():
    a = FaceAnalyzer()
    yield a
    a.close()


def _centroid(parsing: np.ndarray, name: str) -> np.ndarray:
    ys, xs = np.nonzero(parsing == LAPA[name])
    assert len(xs) > 0, f"no {name} pixels"
    return np.array([xs.mean(), ys.mean()])


def test_alignment_meets_the_template_and_parsing_has_the_face_layout(analyzer):
    for path in _faces(3) + _faces(2, "canada_neutral"):
        frame = np.asarray(Image.open(path).convert("RGB"))
        faces = analyzer.faces(frame)
        assert len(faces) == 1 and faces[0].landmarks.shape == (478, 2)
        aligned = align_face(frame, faces[0], analyzer.person(frame), size=224, margin=1.3)
        assert aligned.image.shape == (224, 224, 3) and aligned.person.shape == (224, 224)
        # a least-squares similarity fit of 5 points: a few pixels off at most (faces differ from the template)
        residual = np.linalg.norm(five_points(aligned.landmarks) - template(224, 1.3), axis=1)
        assert residual.max() < 10.0 and residual.mean() < 5.0, residual
        parsing = LandmarkParser()(aligned.image, aligned.landmarks, aligned.person)
        assert parsing.dtype == np.uint8 and parsing.max() <= 10
        counts = np.bincount(parsing.ravel(), minlength=11)
        assert counts[LAPA["skin"]] > 5 * counts[LAPA["nose"]] > 0 and counts[LAPA["hair"]] > 1000
        right_eye, left_eye = _centroid(parsing, "right_eye"), _centroid(parsing, "left_eye")
        nose, mouth = _centroid(parsing, "nose"), _centroid(parsing, "upper_lip")
        assert right_eye[0] < nose[0] < left_eye[0]  # the subject's right eye is on the image's left
        assert abs(right_eye[1] - left_eye[1]) < 4  # aligned: the eyes are level
        assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]
        assert _centroid(parsing, "hair")[1] < nose[1]  # hair above the face's centre, neck/clothes are background
        assert _centroid(parsing, "right_brow")[1] < right_eye[1]


def test_sample_indices_are_even_and_bounded():
    assert sample_indices(10, 4) == [0, 3, 6, 9]
    assert sample_indices(3, 32) == [0, 1, 2]
    assert sample_indices(0, 5) == []


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_faces_command_skips_reports_and_resumes(tmp_path):
    root = tmp_path / "archive"
    (root / "id01").mkdir(parents=True)
    for path in _faces(3):
        shutil.copy(path, root / "id01" / path.name)
    (root / "id01" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.full((128, 128, 3), 127, np.uint8)).save(root / "id01" / "wall.png")  # no face in it
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in _faces(10, "smiling")]
    _write_video(root / "clip.mp4", frames)
    (root / "dead.mp4").write_bytes(b"\x00" * 64)
    out = tmp_path / "out"
    params = FaceParams(size=112, frames_per_video=4)
    summary = extract_faces(root, out, params, workers=1, chunk=2, progress=False)
    assert len(list_units(root, 2)) == 3 + 2  # id01 in 3 chunks of <= 2 images, two videos
    assert summary.per_source["id01"] == {"frames": 4, "faces": 3, "no_face": 1, "unreadable": 1}
    assert summary.per_source["clip.mp4"] == {"frames": 4, "faces": 4, "no_face": 0, "unreadable": 0}
    assert summary.per_source["dead.mp4"]["unreadable"] == 1 and summary.faces == 7
    assert sorted(n.split(":")[0] for n in summary.unreadable) == ["dead.mp4", "id01/broken.jpg"]
    with (out / "faces.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["frame"] for r in rows if r["video"] == "clip"] == ["000000", "000003", "000006", "000009"]
    for row in rows:
        assert Image.open(out / row["path"]).size == (112, 112)
        parsing = np.asarray(Image.open(out / row["parsing"]))
        assert parsing.shape == (112, 112) and parsing.max() <= 10 and (parsing == LAPA["skin"]).mean() > 0.1
    assert json.loads((out / "summary.json").read_text())["faces"] == 7
    # the faces' normalisation statistics: every pixel of every written face
    pixels = np.concatenate([np.asarray(Image.open(out / r["path"])).reshape(-1, 3) / 255.0 for r in rows])
    np.testing.assert_allclose(summary.mean, pixels.mean(0), atol=1e-4)
    np.testing.assert_allclose(summary.std, pixels.std(0), atol=1e-4)
    assert "preprocess.mean=[" in summary.render()
    # a kill after some units: their records are kept, the rest is redone, the result is the same
    before = {p.name: p.read_bytes() for p in (out / "faces" / "id01").iterdir()}
    victim = sorted((out / "parts").glob("clip*.json"))[0]
    victim.unlink()
    again = extract_faces(root, out, params, workers=1, chunk=2, progress=False)
    assert again.resumed == 4 and again.faces == 7 and again.mean == summary.mean
    assert {p.name: p.read_bytes() for p in (out / "faces" / "id01").iterdir()} == before
    with (out / "faces.csv").open() as f:
        assert list(csv.DictReader(f)) == rows


def test_faces_command_needs_root_and_out():
    from domainfm.errors import ConfigError
    from domainfm.face_security.commands.faces import run
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"data": {"root": "???"}, "out": "???"})
    with pytest.raises(ConfigError, match=r"data.root=<a folder of face videos or images> is required"):
        run(cfg)

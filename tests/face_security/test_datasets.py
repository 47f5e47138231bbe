"""The parsing map moves with its face through crop, resize and flip (FSFM's simple-augment path forgets this).
The image is painted from a real parsing map (London faces through our pipeline), so the map can be read back
from the transformed pixels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mediapipe")

from domainfm.errors import DataError  # noqa: E402
from domainfm.face_security.datasets import MIRROR, FaceParsingDataset, FaceParsingView  # noqa: E402
from domainfm.face_security.faces import FaceParams, extract_faces  # noqa: E402
from domainfm.face_security.parsing import LAPA, PALETTE  # noqa: E402

LONDON = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces" / "face_research_lab_london_256"


@pytest.fixture(scope="module")
def painted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    (root / "in").mkdir()
    for path in sorted((LONDON / "neutral").glob("*.jpg"))[:2]:
        (root / "in" / path.name).write_bytes(path.read_bytes())
    extract_faces(root / "in", root / "out", FaceParams(), workers=1, progress=False)
    with (root / "out" / "faces.csv").open() as f:
        for row in csv.DictReader(f):  # paint each face with its map's class colours
            parsing = np.asarray(Image.open(root / "out" / row["parsing"]))
            Image.fromarray(PALETTE[parsing]).save(root / "out" / row["path"])
    return root / "out"


def _decode(image: torch.Tensor) -> torch.Tensor:
    rgb = image.permute(1, 2, 0).reshape(-1, 1, 3) * 255.0
    return (rgb - torch.from_numpy(PALETTE).float()[None]).norm(dim=-1).argmin(1).reshape(image.shape[1:])


def test_crop_and_flip_move_the_map_with_the_image(painted):
    data = FaceParsingDataset(painted)
    view = FaceParsingView(112, [0, 0, 0], [1, 1, 1], scale=(0.3, 1.0), hflip=0.5, interpolation="nearest")
    flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        sample = view(data[seed % len(data)])
        assert sample["image"].shape == (3, 112, 112) and sample["parsing"].shape == (112, 112)
        seen = _decode(sample["image"])
        flipped = not torch.equal(seen, sample["parsing"])
        flips += flipped
        expected = MIRROR[seen] if flipped else seen  # a mirrored face: its right eye is the old left eye
        assert (expected == sample["parsing"]).float().mean() > 0.99
    assert 0 < flips < 12


def test_mirror_swaps_only_left_and_right():
    assert MIRROR[LAPA["right_eye"]] == LAPA["left_eye"] and MIRROR[LAPA["left_brow"]] == LAPA["right_brow"]
    assert MIRROR[LAPA["nose"]] == LAPA["nose"] and torch.equal(MIRROR[MIRROR], torch.arange(11))


def test_a_folder_without_faces_csv_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"faces.csv not found: point data.root at a folder written by domainfm faces"):
        FaceParsingDataset(tmp_path)

"""Blended fakes on real London faces (two identities through our pipeline): the target is untouched outside the
feathered mask, the donor's (colour-matched) face is inside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mediapipe")

from domainfm.face_security.align import FaceAnalyzer, align_face  # noqa: E402
from domainfm.face_security.fakes import blend_faces, blend_mask  # noqa: E402
from domainfm.face_security.parsing import LandmarkParser  # noqa: E402

LONDON = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces" / "face_research_lab_london_256"


def test_blended_fake_keeps_the_target_outside_and_the_donor_inside():
    analyzer, parser, faces = FaceAnalyzer(), LandmarkParser(), []
    for path in sorted((LONDON / "neutral").glob("*.jpg"))[:2]:
        frame = np.asarray(Image.open(path).convert("RGB"))
        a = align_face(frame, analyzer.faces(frame)[0], analyzer.person(frame))
        faces.append((a.image, parser(a.image, a.landmarks, a.person)))
    analyzer.close()
    (target, t_map), (donor, _) = faces
    mask = blend_mask(t_map, erode=5, feather=4.0)
    assert mask.min() >= 0.0 and mask.max() <= 1.0 and (mask > 0.99).mean() > 0.1
    fake = blend_faces(target, donor, mask)
    outside, core = mask < 1e-3, mask > 0.999
    assert np.array_equal(fake[outside], target[outside])  # hair, background untouched
    # inside: the donor's structure (correlation with the donor's pixels, not the target's)
    f, d, t = (x[core].astype(float).ravel() for x in (fake, donor, target))
    assert np.corrcoef(f, d)[0, 1] > 0.9 > np.corrcoef(f, t)[0, 1]
    # colour matched to the target inside the mask
    np.testing.assert_allclose(fake[mask > 0.5].mean(0), target[mask > 0.5].mean(0), atol=6.0)

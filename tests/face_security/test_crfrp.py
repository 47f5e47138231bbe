"""CRFR-P masking (FSFM) on parsing maps of real London faces (../shared/data/faces, CC BY 4.0) made by our
pipeline, against a transcription of FSFM's per-face loop; one synthetic map for the |R| > M branch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mediapipe")

from domainfm.face_security.align import FaceAnalyzer, align_face  # noqa: E402
from domainfm.face_security.crfrp import REGIONS, crfrp_masks, crfrp_reference, region_patches  # noqa: E402
from domainfm.face_security.parsing import LandmarkParser  # noqa: E402

LONDON = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces" / "face_research_lab_london_256"


@pytest.fixture(scope="module")
def maps() -> torch.Tensor:
    analyzer, parser, out = FaceAnalyzer(), LandmarkParser(), []
    for path in sorted((LONDON / "neutral").glob("*.jpg"))[:6]:
        frame = np.asarray(Image.open(path).convert("RGB"))
        aligned = align_face(frame, analyzer.faces(frame)[0], analyzer.person(frame))
        out.append(torch.from_numpy(parser(aligned.image, aligned.landmarks, aligned.person)))
    analyzer.close()
    return torch.stack(out)


def test_region_patches_follow_the_any_pixel_and_boundary_rules():
    parsing = torch.zeros(1, 4, 4, dtype=torch.long)  # 2 x 2 patches of 2 px
    parsing[0, 0, 0] = 1  # patch 0: skin + background -> skin, background, boundary
    parsing[0, 0:2, 2:4] = 1  # patch 1: skin only
    parsing[0, 2, 2] = 10  # patch 3: hair + background
    parsing[0, 2:4, 0:2] = 6  # patch 2: nose only
    r = region_patches(parsing, 2)[0]
    idx = {name: i for i, name in enumerate(REGIONS)}
    assert r[idx["skin"]].tolist() == [True, True, False, False]
    assert r[idx["boundary"]].tolist() == [True, False, False, False]
    assert r[idx["nose"]].tolist() == [False, False, True, False]
    assert r[idx["hair"]].tolist() == [False, False, False, True]
    assert r[idx["background"]].tolist() == [True, False, False, True]


def test_class_bits_equal_the_comparison_per_class(maps):
    from domainfm.face_security.crfrp import _present_any, _present_bits

    noisy = torch.randint(-3, 20, (4, 48, 40))  # out-of-range labels (ignore values) belong to no class
    for cells, p in ((noisy, 8), (noisy.abs().to(torch.uint8), 8), (maps.long(), 16), (maps.long(), 14)):
        h, w = cells.shape[1] // p, cells.shape[2] // p
        cells = cells[:, : h * p, : w * p].contiguous()
        assert torch.equal(_present_bits(cells, p), _present_any(cells, p))


def test_masks_keep_their_invariants_on_real_parsing_maps(maps):
    regions = region_patches(maps.repeat(20, 1, 1), 16)  # 120 faces, 196 patches
    assert regions.shape == (120, 8, 196)
    pooled = torch.nn.functional.max_pool2d((maps[:, None] == torch.arange(11)[None, :, None, None]).float(), 16)
    pooled = pooled.flatten(2).bool()  # FSFM's membership: max-pool of each class map
    assert torch.equal(regions[:6, REGIONS.index("hair")], pooled[:, 10])
    assert torch.equal(regions[:6, REGIONS.index("mouth")], pooled[:, 7] | pooled[:, 8] | pooled[:, 9])
    assert torch.equal(regions[:6, REGIONS.index("boundary")], (pooled[:, 10] | pooled[:, 0]) & pooled[:, 1])
    mask, sfr, choice = crfrp_masks(regions, 0.75, torch.Generator().manual_seed(0))
    R = regions[torch.arange(120), choice]
    assert (mask.sum(1) == 147).all()
    assert torch.equal(sfr, R) and (mask | ~R).all()  # R is always covered (|R| < 147 on these faces)
    assert set(choice.tolist()) == set(range(6))


def test_masking_matches_fsfm_per_face_loop_in_distribution(maps):
    """For each region choice, how often each region's patches are masked, vectorised vs FSFM's loop."""
    regions = region_patches(maps, 16)
    draws = 150
    for c in range(6):
        batch = regions.repeat(draws, 1, 1)
        mask, _, _ = crfrp_masks(batch, 0.75, torch.Generator().manual_seed(c), torch.full((len(batch),), c))
        ours = np.stack([(mask & batch[:, g]).sum(1).double().mean().item() for g in range(8)])
        rng, ref = np.random.default_rng(c), np.zeros(8)
        for row in batch.numpy():
            m, sfr = crfrp_reference(row, c, 0.75, rng)
            assert m.sum() == 147 and np.array_equal(sfr, row[c])
            ref += [(m & row[g]).sum() for g in range(8)]
        ref /= len(batch)
        np.testing.assert_allclose(ours, ref, atol=1.0, err_msg=f"region {REGIONS[c]}")  # patches per face


def test_a_region_larger_than_the_budget_is_subsampled():
    parsing = torch.full((3, 224, 224), 10, dtype=torch.long)  # synthetic: all hair but one skin patch row
    parsing[:, :16] = 1
    regions = region_patches(parsing, 16)
    mask, sfr, choice = crfrp_masks(regions, 0.75, torch.Generator().manual_seed(1), torch.full((3,), 5))  # hair
    hair = regions[:, 5]
    assert hair.sum(1).tolist() == [182] * 3
    assert (mask.sum(1) == 147).all() and (mask <= hair).all() and torch.equal(sfr, mask)
    ref, ref_sfr = crfrp_reference(regions[0].numpy(), 5, 0.75, np.random.default_rng(0))
    assert ref.sum() == 147 and (ref <= hair[0].numpy()).all() and np.array_equal(ref, ref_sfr)

"""Fixtures: the real Aperio slide (read-only, from ../shared/data) and synthetic pyramids written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pathology import synthetic


@pytest.fixture(scope="session")
def cmu_slide(shared_data) -> Path:
    return shared_data / "pathology" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Synthetic slides: ``pyramid.tif`` (3 levels, MPP 0.5), ``nompp.tif`` (no resolution tags),
    ``truncated.tif`` (the pyramid cut at a third) and ``notaslide.svs`` (text)."""
    folder = tmp_path_factory.mktemp("synthetic")
    image = synthetic.standard_image()
    synthetic.write_slide(folder / "pyramid.tif", image)
    synthetic.write_slide(folder / "nompp.tif", image[:1024, :1024], mpp=None)
    data = (folder / "pyramid.tif").read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 3])
    (folder / "notaslide.svs").write_text("not a slide\n")
    return folder


@pytest.fixture(scope="session")
def pyramid(synthetic_dir) -> Path:
    return synthetic_dir / "pyramid.tif"

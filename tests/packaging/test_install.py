"""Fresh installs (slow: `make bench`): `domainfm[pathology]` alone into a new venv tiles the bundled slide, and
the base package alone runs the core demo and says what is missing for pathology. Packages come from the
registry (torch from this machine's local wheels, as for `make test`)."""

from __future__ import annotations

import shutil
import subprocess
import venv

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _venv(folder):
    venv.create(folder, with_pip=True)
    return folder / "bin" / "python"


def _source(tmp_path):
    """A copy of the repository to install from: pip builds in the source tree, which must not gain a build/."""
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "runs", ".bench", "*.egg-info", "__pycache__", ".*cache")
    return shutil.copytree(REPO, tmp_path / "src", ignore=ignore)


def _pip(python, spec):
    out = subprocess.run([str(python), "-m", "pip", "install", "--quiet", spec], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_the_pathology_extra_alone_tiles_the_bundled_slide(tmp_path):
    python = _venv(tmp_path / "venv")
    _pip(python, f"{_source(tmp_path)}[pathology]")
    slide = REPO / "pathology" / "sample_data" / "CMU-1-Small-Region.svs"
    out = subprocess.run(
        [str(python), "-m", "domainfm", "tile", f"data.root={slide}", f"out={tmp_path / 'tiles'}", "progress=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "tiles          40 of 256 px at 0.5 um/px" in out.stdout
    assert (tmp_path / "tiles" / "patches" / "CMU-1-Small-Region.h5").is_file()


def test_the_base_package_alone_runs_the_core_demo(tmp_path):
    python = _venv(tmp_path / "venv")
    _pip(python, str(_source(tmp_path)))
    demo = subprocess.run(
        [str(python), "-m", "domainfm", "demo", "core", f"out={tmp_path / 'demo'}", "steps=5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo" / "simclr" / "export" / "model.safetensors").is_file()
    assert "kNN balanced accuracy" in demo.stdout
    helped = subprocess.run([str(python), "-m", "domainfm", "--help"], capture_output=True, text=True)
    assert 'pathology commands:  [not installed: pip install "domainfm[pathology]"]' in helped.stdout
    tile = subprocess.run(
        [str(python), "-m", "domainfm", "tile", "data.root=x", "out=y"], cwd=tmp_path, capture_output=True, text=True
    )
    assert tile.returncode == 2 and tile.stderr.strip().endswith('pip install "domainfm[pathology]"')

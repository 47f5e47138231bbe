"""``domainfm tile``: the CLI end to end on the real slide, resume, one-line errors, and the core's lazy import."""

import os
import subprocess
import sys

import pytest
import yaml
from domainfm.pathology.h5io import read_coords

from tests.conftest import run_cli


def test_tile_command_end_to_end(cmu_slide, synthetic_dir, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    os.symlink(cmu_slide, slides / cmu_slide.name)
    os.symlink(synthetic_dir / "notaslide.svs", slides / "notaslide.svs")
    out = tmp_path / "tiles"
    args = ["tile", f"data.root={slides}", f"out={out}", "progress=false"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "slides         2: 1 tiled, 0 already done, 1 skipped" in first.stdout
    assert "notaslide.svs: not a slide format" in first.stdout
    for path in ("patches/CMU-1-Small-Region.h5", "overlays/CMU-1-Small-Region.png", "summary.json"):
        assert (out / path).is_file(), path
    second = run_cli(args, tmp_path)
    assert second.returncode == 0 and "2: 0 tiled, 1 already done, 1 skipped" in second.stdout
    changed = run_cli([*args, "tiling.tile_px=224"], tmp_path)
    assert changed.returncode == 2
    err = changed.stderr.strip().splitlines()
    assert len(err) == 1 and "other parameters" in err[0] and "overwrite=true" in err[0]


def test_cfg_job_and_missing_keys(tmp_path):
    out = run_cli(["tile", "data.root=/x", "out=/y", "tiling.target_mpp=0.25", "--cfg", "job"], tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["tiling"]["target_mpp"] == 0.25 and cfg["tiling"]["tile_px"] == 256 and cfg["tissue"]["mthresh"] == 7
    missing = run_cli(["tile", "data.root=/x"], tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: out is required (domainfm tile): give out=<the output file or folder>"


def test_without_the_extra_the_error_is_one_line(tmp_path):
    code = (
        "import sys; sys.modules['openslide'] = None\n"
        "from domainfm.cli import main\n"
        f"main(['tile', 'data.root={tmp_path}', 'out={tmp_path / 'o'}'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and 'pip install "domainfm[pathology]"' in lines[0]


def test_core_does_not_import_pathology():
    code = (
        "import sys, domainfm.cli, domainfm.plugins; domainfm.plugins.domains(); domainfm.cli._usage()\n"
        "print('domainfm.pathology' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False"


def test_sweeps_tile_each_job_into_its_own_folder(cmu_slide, tmp_path):
    out = tmp_path / "out"
    run = run_cli(
        ["tile", "-m", f"data.root={cmu_slide}", f"out={out}", "tiling.tile_px=256,512", "progress=false"], tmp_path
    )
    assert run.returncode == 0, run.stderr
    for job, side in (("0", 256), ("1", 512)):
        _, attrs = read_coords(out / job / "patches" / "CMU-1-Small-Region.h5")
        assert int(attrs["patch_size"]) == side
    assert not (tmp_path / "multirun").exists() and not (out / "patches").exists()


@pytest.mark.parametrize("module", ["skimage", "shapely"])
def test_the_extra_guard_names_every_missing_library(tmp_path, module):
    code = f"import sys; sys.modules[{module!r}] = None\nimport domainfm.pathology"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f'ImportError: domainfm pathology needs {module}: pip install "domainfm[pathology]"'
    )

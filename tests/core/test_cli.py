"""The ``domainfm`` CLI: Hydra overrides, --cfg job, multirun, recipes and one-line errors."""

import json

import pytest
import yaml

from tests.conftest import TINY, run_cli


def test_recipes_are_grouped_by_domain_with_descriptions(tmp_path):
    out = run_cli(["recipes"], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "core" and "pathology" in lines
    core = lines[: lines.index("medical")]
    line = next(ln for ln in core if ln.strip().startswith("core/mae_vit_tiny"))
    assert line.startswith("  ") and "MAE (He et al. 2022)" in line
    medical = lines[lines.index("medical") + 1 : lines.index("pathology")]
    assert medical and all(ln.strip().startswith("medical/") for ln in medical if ln.strip())
    pathology = lines[lines.index("pathology") + 1 : lines.index("remote_sensing")]
    assert pathology and all(ln.strip().startswith("pathology/") for ln in pathology if ln.strip())
    remote = lines[lines.index("remote_sensing") + 1 : lines.index("three_d")]
    assert remote and all(ln.strip().startswith("remote_sensing/") for ln in remote if ln.strip())
    assert all(ln.strip().startswith("three_d/") for ln in lines[lines.index("three_d") + 1 :] if ln.strip())
    only = run_cli(["recipes", "domain=pathology"], tmp_path)
    assert only.stdout.splitlines()[0] == "pathology" and "core/" not in only.stdout


def test_cfg_job_shows_overrides(tmp_path):
    out = run_cli(["pretrain", "trainer.max_steps=7", "data.batch_size=5", "trainer.seed=3", "--cfg", "job"], tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["trainer"]["max_steps"] == 7
    assert cfg["trainer"]["seed"] == 3
    assert cfg["data"]["batch_size"] == 5
    assert cfg["name"] == "mae_vit_tiny"
    assert not (tmp_path / "runs").exists()


def test_unknown_recipe_lists_valid_choices(tmp_path):
    out = run_cli(["pretrain", "recipe=core/nope"], tmp_path)
    assert out.returncode == 2
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "core/nope" in err and "core/mae_vit_tiny" in err


def test_unknown_key_lists_valid_keys(tmp_path):
    out = run_cli(["pretrain", "trainer.max_stepz=3"], tmp_path)
    assert out.returncode == 2
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "trainer.max_stepz" in err and "max_steps" in err and "checkpoint_every" in err


def test_unknown_command_lists_commands(tmp_path):
    out = run_cli(["pretrian"], tmp_path)
    assert out.returncode == 2
    assert "pretrain" in out.stderr and "recipes" in out.stderr


def test_missing_data_root_is_one_line(tmp_path):
    missing = tmp_path / "no_such_folder"
    out = run_cli(["pretrain", f"data.root={missing}", f"run_dir={tmp_path / 'run'}", *TINY], tmp_path)
    assert out.returncode == 2
    err = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert err == [f"error: data.root={missing} does not exist: point data.root at a folder of images"]


def test_empty_data_root_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    out = run_cli(["pretrain", f"data.root={empty}", f"run_dir={tmp_path / 'run'}", *TINY], tmp_path)
    assert out.returncode == 2
    assert f"data.root={empty} holds no files ending in" in out.stderr


def test_multirun_sweeps_seeds_into_separate_folders(tmp_path):
    out = run_cli(
        ["pretrain", "-m", "trainer.seed=0,1", "trainer.max_steps=1", f"run_dir={tmp_path / 'sweep'}", *TINY], tmp_path
    )
    assert out.returncode == 0, out.stderr
    seeds = []
    for job in ("0", "1"):
        folder = tmp_path / "sweep" / job
        assert (folder / "export" / "model.safetensors").exists()
        seeds.append(yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["seed"])
        assert json.loads((folder / "summary.json").read_text())["steps"] == 1
    assert seeds == [0, 1]


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_pretrain_refuses_to_export_untrained_weights(tmp_path, steps):
    run = tmp_path / "run"
    out = run_cli(["pretrain", f"run_dir={run}", f"trainer.max_steps={steps}", *TINY], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: trainer.max_steps={steps} is out of range: it must be >= 1"]
    assert not (run / "config.yaml").exists() and not (run / "export").exists()

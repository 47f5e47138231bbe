"""Run folders are never mixed: a changed method on a run with checkpoints is refused before anything is written
(its config.yaml and export keep working), unreadable checkpoints never restart a run silently, and
trainer.resume=fresh sets the old checkpoints aside instead of deleting them."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from tests.conftest import TINY, pretrain_in_process, run_cli

FAST = [*TINY, "trainer.checkpoint_every=1"]


def test_changing_the_method_on_a_run_is_refused_and_fresh_sets_the_old_run_aside(tmp_path):
    run = tmp_path / "run"
    pretrain_in_process([f"run_dir={run}", "trainer.max_steps=2", *FAST])
    before = (run / "config.yaml").read_text()
    out = run_cli(["pretrain", "recipe=core/simmim_vit_tiny", f"run_dir={run}", "trainer.max_steps=2", *FAST], tmp_path)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {run} holds checkpoints of another config (changed: ")
    assert "method._target_" in line and line.endswith(
        "give a new run_dir, or trainer.resume=fresh to set them aside and start again"
    )
    assert (run / "config.yaml").read_text() == before  # untouched: the old run still exports
    exported = run_cli(["export", f"run_dir={run}", f"out={tmp_path / 'again'}"], tmp_path)
    assert exported.returncode == 0, exported.stderr

    old = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    fresh = run_cli(
        ["pretrain", "recipe=core/simmim_vit_tiny", f"run_dir={run}", "trainer.max_steps=1", "trainer.resume=fresh"]
        + FAST,
        tmp_path,
    )
    assert fresh.returncode == 0, fresh.stderr
    aside = run / "checkpoints" / "set-aside-1-config-changed"
    assert sorted(p.name for p in aside.glob("step_*.pt")) == old
    assert OmegaConf.load(aside / "config.yaml").name == "mae_vit_tiny"
    assert OmegaConf.load(run / "config.yaml").name == "simmim_vit_tiny"
    assert [p.name for p in (run / "checkpoints").glob("step_*.pt")] == ["step_00000001.pt"]


def test_unreadable_checkpoints_are_refused_then_kept_aside_with_fresh(tmp_path):
    run = tmp_path / "run"
    pretrain_in_process([f"run_dir={run}", "trainer.max_steps=2", *FAST])
    files = sorted((run / "checkpoints").glob("step_*.pt"))
    for f in files:
        f.write_bytes(b"truncated")
    out = run_cli(["pretrain", f"run_dir={run}", "trainer.max_steps=3", *FAST], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: every checkpoint in {run / 'checkpoints'} is unreadable ({len(files)}, newest {files[-1].name}): "
        "trainer.resume=fresh restarts from step 0 and keeps them in a set-aside folder"
    )
    assert all(f.read_bytes() == b"truncated" for f in files)
    fresh = run_cli(["pretrain", f"run_dir={run}", "trainer.max_steps=1", "trainer.resume=fresh", *FAST], tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    aside = run / "checkpoints" / "set-aside-1-fresh"
    assert sorted(p.read_bytes() for p in aside.iterdir()) == [b"truncated"] * len(files)
    state = torch.load(run / "checkpoints" / "step_00000001.pt", weights_only=True)
    assert state["step"] == 1


def test_config_records_the_run_folder_actually_used(tmp_path):
    where = tmp_path / "elsewhere"
    out = run_cli(["pretrain", f"hydra.run.dir={where}", "trainer.max_steps=1", *TINY], tmp_path)
    assert out.returncode == 0, out.stderr
    assert OmegaConf.load(where / "config.yaml").run_dir == str(where)


def test_a_crafted_run_config_cannot_run_code(tmp_path):
    """`domainfm export run_dir=<someone's run>` instantiates the folder's config: _target_s outside domainfm,
    timm, torch and the installed domains are refused before anything is imported or called."""
    run = tmp_path / "run"
    pretrain_in_process([f"run_dir={run}", "trainer.max_steps=1", *FAST])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    original = (run / "config.yaml").read_text()
    crafted = OmegaConf.load(run / "config.yaml")
    crafted.method.backbone = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    OmegaConf.save(crafted, run / "config.yaml")
    out = run_cli(["export", f"run_dir={run}", f"out={tmp_path / 'x'}"], tmp_path)
    assert out.returncode == 2 and victim.read_text() == "precious"
    assert out.stderr.strip().splitlines() == [
        f"error: {run / 'config.yaml'}: method.backbone._target_='builtins.open' is outside domainfm, timm, torch, "
        "torchvision; refusing to run code named by a file from disk (only configs of domainfm recipes can be rebuilt)"
    ]
    from domainfm.errors import ConfigError
    from domainfm.plugins import check_targets

    for bad in ("domainfmx.evil", "timm", "os.system"):
        try:
            check_targets({"data": [{"_target_": bad}]}, "c.yaml")
        except ConfigError as err:
            assert f"c.yaml: data[0]._target_={bad!r} is outside" in str(err)
        else:
            raise AssertionError(bad)
    check_targets(OmegaConf.to_container(OmegaConf.create(original)), "ok.yaml")  # the real run's config passes

"""A table of bad values through the CLI: each is one line naming the key, the value and what is valid, exit code
2, no traceback, nothing written (the run folder is never created)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

CASES = [
    (
        ["pretrain", "trainer.max_steps=abc"],
        "trainer.max_steps='abc' is not an integer (default trainer.max_steps=250)",
    ),
    (["pretrain", "trainer.lr=abc"], "trainer.lr='abc' is not a number (default trainer.lr=0.0015)"),
    (["pretrain", "data.batch_size=0"], "data.batch_size=0 is out of range: it must be >= 1"),
    (["pretrain", "data.batch_size=-4"], "data.batch_size=-4 is out of range: it must be >= 1"),
    (["pretrain", "trainer.checkpoint_every=0"], "trainer.checkpoint_every=0 is out of range: it must be >= 1"),
    (
        ["pretrain", "trainer.progress=maybe"],
        "trainer.progress='maybe' is not true or false (default trainer.progress=true)",
    ),
    (
        ["pretrain", "recipe=pathology/uni_tiny", "data.root=/slides"],
        "data.coords is required (domainfm pretrain): give data.coords=<the patches/ folder written by domainfm tile "
        "data.root=<slides> out=<folder>>",
    ),
    (
        ["tile", "data.root=/slides", "out=OUT", "tiling.tile_px=abc"],
        "tiling.tile_px='abc' is not an integer (default tiling.tile_px=256)",
    ),
    (
        ["tile", "data.root=/slides", "out=OUT", "tiling.tile_px=-5"],
        "tiling.tile_px=-5 is out of range: it must be >= 1",
    ),
    (
        ["tile", "data.root=/slides", "out=OUT", "tiling.min_tissue=2"],
        "tiling.min_tissue=2 is out of range: it must be <= 1",
    ),
    (
        ["extract", "backbone=/no/such/run", "data.root=KATHER", "out=OUT"],
        "backbone=/no/such/run: no such file or folder; give a run or export folder, a checkpoint file (with arch=), "
        "hf-hub:<org>/<name> or timm:<name>",
    ),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a[1:])[:40] for a, _ in CASES])
def test_bad_values_are_one_line(tmp_path, kather_tiles, args, message):
    run = tmp_path / "run"
    args = [a.replace("OUT", str(tmp_path / "out")).replace("KATHER", str(kather_tiles)) for a in args]
    if args[0] == "pretrain":
        args.append(f"run_dir={run}")
    out = run_cli(args, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {message}"]
    assert "Traceback" not in out.stdout + out.stderr
    assert not run.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("backbone", ["hf-hub:lab/not-cached", "vit_tiny_patch16_224.augreg_in21k"])
def test_hub_weights_offline_fail_fast_in_one_line(tmp_path, kather_tiles, backbone):
    """HF_HUB_OFFLINE and an empty cache: one line saying how to pass local weights (the cache is read, no download
    is tried; before, 30-55 s of retries and a traceback). Without HF_HUB_OFFLINE a 2 s reachability check of the hub
    decides the same."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HOME": str(tmp_path / "hfhome")}
    out = run_cli(
        ["extract", f"backbone={backbone}", f"data.root={kather_tiles}", f"out={tmp_path / 'f.h5'}"], tmp_path, env=env
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: backbone={backbone}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE); "
        "download it where there is network and pass the folder (backbone=<folder with config.json + "
        "model.safetensors>) or a checkpoint file with arch=<timm name>"
    ]

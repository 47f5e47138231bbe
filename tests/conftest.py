"""Shared fixtures. Real sample data is read from ../shared/data (read-only) or the bundled package data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Under pytest-xdist every worker (and every process it starts) gets its share of the cores: with -n 2 on 2 cores,
# two workers running torch's default 2 threads each oversubscribe the machine and OpenMP's spinning threads slow
# the slowest tests 10x (the LVM-Med recipe test: 15 s alone, 150-170 s beside another worker).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# A small configuration of the core MAE recipe so CLI runs take seconds on 2 CPU cores.
TINY = [
    "+backbone.depth=2",
    "preprocess.img_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "trainer.log_every=1",
]


def run_cli(
    args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None, module: str = "domainfm"
) -> subprocess.CompletedProcess:
    """Run ``python -m domainfm <args>`` in a subprocess (Hydra apps own the process)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise RuntimeError(f"{SHARED_DATA} is missing: tests need ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kather_tiles() -> Path:
    from domainfm.sample_data import sample_path

    return sample_path("kather2016_tiles")


def compose(command: str, overrides: list[str]):
    """The config ``domainfm <command> <overrides>`` would run, composed in-process (no new interpreter)."""
    from domainfm.cli import compose_config

    return compose_config(command, overrides)


def pretrain_in_process(overrides: list[str]) -> dict:
    """Run ``domainfm pretrain`` in this process (needs ``run_dir=`` among the overrides); returns the summary."""
    from domainfm.commands import pretrain

    return pretrain.run(compose("pretrain", overrides))


def assert_resumes_exactly(common: list[str], run: Path, reference: dict) -> None:
    """Pretrain 4 steps into ``run``, delete everything after the step-2 checkpoint (as if killed there), run the same
    command again: it resumes from step 2 and exports weights equal to ``reference`` (an uninterrupted run's
    ``model.safetensors``)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    pretrain_in_process([*common, f"run_dir={run}", "trainer.max_steps=4"])
    (run / "checkpoints" / "step_00000004.pt").unlink()
    shutil.rmtree(run / "export")
    assert pretrain_in_process([*common, f"run_dir={run}", "trainer.max_steps=4"])["resumed_from"] == 2
    b = load_file(str(run / "export" / "model.safetensors"))
    assert reference.keys() == b.keys() and all(torch.equal(reference[k], b[k]) for k in reference)


def free_port() -> int:
    """A free TCP port on localhost (for a gloo process group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

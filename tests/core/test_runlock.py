"""One process per run folder: a second pretrain on a locked run_dir stops in one line naming the holder; the lock
of a killed process is gone (no stale lock after a crash)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from domainfm.engine.runlock import RunLock
from domainfm.errors import ConfigError

from tests.conftest import TINY, run_cli

HOLD = """
import sys, time
from domainfm.engine.runlock import RunLock
with RunLock(sys.argv[1], "domainfm pretrain"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_locked_folder_stops_in_one_line_and_a_killed_holder_frees_it(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        out = run_cli(["pretrain", f"run_dir={run}", "trainer.max_steps=1", *TINY], tmp_path)
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [
            f"error: {run} is in use by pid {holder.pid} (domainfm pretrain): wait for it to finish, stop it, "
            "or give another run_dir"
        ]
        assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    out = run_cli(["pretrain", f"run_dir={run}", "trainer.max_steps=1", *TINY], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (run / "export" / "model.safetensors").is_file()


def test_the_lock_is_exclusive_and_released_on_exit(tmp_path):
    first = RunLock(tmp_path, "first").__enter__()
    with pytest.raises(ConfigError, match=rf"in use by pid {os.getpid()} \(first\)"), RunLock(tmp_path):
        pass
    first.__exit__(None, None, None)
    with RunLock(tmp_path, "second"):
        assert (tmp_path / ".lock").read_text() == f"pid {os.getpid()} (second)"

"""Exact resume: SIGKILL at an arbitrary step, rerun the same command, get bitwise-identical weights."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import TINY


def _cmd(run_dir):
    return [
        sys.executable,
        "-m",
        "domainfm",
        "pretrain",
        f"run_dir={run_dir}",
        "trainer.max_steps=24",
        "trainer.checkpoint_every=4",
        "trainer.keep_last=2",
        *TINY,
    ]


def _steps(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip().endswith("}")]
    return max(steps, default=0)


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    ref = tmp_path / "uninterrupted"
    done = subprocess.run(_cmd(ref), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _steps(killed) < 11 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reached = _steps(killed)
    assert 11 <= reached < 24
    assert not (killed / "export").exists()

    resumed = subprocess.run(_cmd(killed), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from"] in (8, 12, 16, 20) and summary["resumed_from"] <= reached
    assert (killed / "export" / "model.safetensors").read_bytes() == (ref / "export" / "model.safetensors").read_bytes()
    # metrics read as one run: every step once, same losses as the uninterrupted run
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    # keep_last=2
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_00000020.pt", "step_00000024.pt"]

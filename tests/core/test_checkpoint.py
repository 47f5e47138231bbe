"""Atomic checkpoint writes, rotation, weights-only loading and fallback past a corrupt newest file."""

import logging
import os

import pytest
import torch
from domainfm.engine import checkpoint as ckpt
from domainfm.engine.checkpoint import CheckpointManager, capture_rng, restore_rng


def _state(step):
    return {"step": step, "model": {"w": torch.full((3,), float(step))}}


def test_keep_last_and_order(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for s in (1, 2, 3, 10):
        mgr.save(_state(s), s)
    assert [p.name for p in mgr.list()] == ["step_00000003.pt", "step_00000010.pt"]
    state, path = mgr.load_latest()
    assert state["step"] == 10 and path.name == "step_00000010.pt"


def test_truncated_newest_falls_back_with_warning(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save(_state(1), 1)
    mgr.save(_state(2), 2)
    newest = mgr.path_for(2)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        state, path = mgr.load_latest()
    assert state["step"] == 1 and path == mgr.path_for(1)
    assert "step_00000002.pt is unreadable" in caplog.text


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save(_state(5), 5)
    before = mgr.path_for(5).read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError):
        ckpt.atomic_save(_state(6), mgr.path_for(5))
    assert mgr.path_for(5).read_bytes() == before
    monkeypatch.undo()
    assert mgr.load_latest()[0]["step"] == 5


def test_checkpoint_loads_with_weights_only(tmp_path):
    import numpy as np

    np.random.seed(1)
    torch.manual_seed(2)
    state = {"step": 1, "rng": capture_rng()}
    ckpt.atomic_save(state, tmp_path / "step_00000001.pt")
    loaded = torch.load(tmp_path / "step_00000001.pt", weights_only=True)
    a = (np.random.rand(), torch.rand(1).item())
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng(loaded["rng"])
    assert (np.random.rand(), torch.rand(1).item()) == a
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

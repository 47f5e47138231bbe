"""Radiance-grid fitting: the renderer against the closed form of a uniform medium, NeRF-synthetic cameras, a fit
on the real lego views that beats an empty grid on held-out views, the rgbsigma export in NeRF-MAE's convention,
and a fit killed mid-way that resumes to the same grid; the command's one-line errors."""

import json
import math

import numpy as np
import pytest
import torch
from domainfm.errors import DataError
from domainfm.three_d import radiance_grid as rg

from tests.conftest import SHARED_DATA, compose

LEGO = SHARED_DATA / "three_d" / "nerf_synthetic_lego_200px"


def test_rendering_a_uniform_medium_matches_the_closed_form():
    grid = rg.RadianceGrid(8, (-1, -1, -1), (1, 1, 1))
    density, color = 0.7, torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        grid.grid[:, 0] = math.log(density)
        grid.grid[:, 1:] = torch.logit(color)[None, :, None, None, None]
    origins = torch.tensor([[-3.0, 0.1, -0.2], [0.3, -4.0, 0.0], [5.0, 5.0, 5.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # the last ray misses the box
    rgb, acc = grid.render(origins, dirs, n_samples=16, background=1.0)
    opacity = 1 - math.exp(-density * 2.0)  # a path of length 2 through the box
    expected = color * opacity + (1 - opacity)
    assert torch.allclose(rgb[:2], expected.expand(2, 3), atol=1e-5)
    assert torch.allclose(acc[:2], torch.tensor([opacity] * 2), atol=1e-5)
    assert torch.allclose(rgb[2], torch.ones(3)) and float(acc[2].detach()) == 0.0


def test_views_and_cameras_follow_the_nerf_synthetic_conventions():
    views = rg.read_posed_images(LEGO)
    meta = json.loads((LEGO / "transforms_train.json").read_text())
    assert views.images.shape == (100, 200, 200, 3) and views.hw == (200, 200)
    assert views.focal == pytest.approx(0.5 * 200 / math.tan(0.5 * meta["camera_angle_x"]))  # data README
    assert float(views.images.min()) >= 0 and float(views.images.max()) <= 1
    assert float(views.images[0, 0, 0].min()) == pytest.approx(1.0)  # transparent corner composited on white
    pose = views.poses[3]
    origins, dirs = rg.camera_rays(pose, (4, 4), focal=2.0)
    centre = dirs.reshape(4, 4, 3)[1:3, 1:3].mean((0, 1))
    assert torch.allclose(centre / centre.norm(), -pose[:3, 2], atol=1e-6)  # the camera looks down its -z
    assert torch.allclose(origins[0], pose[:3, 3])
    with pytest.raises(
        DataError, match=r"no transforms_test\.json \(found: transforms_train\.json; give fit\.split=\)"
    ):
        rg.read_posed_images(LEGO, split="test")


def _params(**kw):
    return rg.FitParams(**{"resolutions": (12, 20), "iterations": 40, "rays": 512, "samples_per_voxel": 1.0, **kw})


def test_a_fit_on_the_real_lego_views_resumes_exactly_and_exports_nerf_mae_grids(tmp_path, monkeypatch):
    views = rg.read_posed_images(LEGO)
    views = rg.PosedImages(views.images[:, ::4, ::4].contiguous(), views.poses, views.focal / 4)  # 50 px views
    whole = rg.fit_radiance_grid(views, _params(), tmp_path / "whole", checkpoint_every=10, progress=False)
    white = float(np.mean([rg.psnr(torch.ones_like(views.images[i]), views.images[i]) for i in (5, 15, 25)]))
    assert whole["views"] == {"train": 90, "held_out": 10} and whole["resolution"] == 20
    assert whole["held_out_psnr"] > white + 3.0, (whole["held_out_psnr"], white)  # learned the scene, not the white
    with np.load(tmp_path / "whole" / "rgbsigma.npz") as f:
        grid, lo, hi, shape = f["rgbsigma"], f["bbox_min"], f["bbox_max"], f["resolution"]
    assert grid.ndim == 4 and grid.shape[-1] == 4 and max(grid.shape[:3]) <= 20 and grid.dtype == np.float32
    assert list(shape) == list(grid.shape[:3]) == whole["shape"]
    step = 3.0 / 19
    assert np.allclose(hi - lo, (np.asarray(grid.shape[:3]) - 1) * step, atol=1e-5)  # voxel centres span the box

    calls = {"n": 0}
    real = rg.sample_rays

    def dies_at_step_25(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 26:
            raise KeyboardInterrupt  # as if killed during step 26 (the last checkpoint is step 20)
        return real(*args, **kwargs)

    monkeypatch.setattr(rg, "sample_rays", dies_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        rg.fit_radiance_grid(views, _params(), tmp_path / "killed", checkpoint_every=10, progress=False)
    assert not (tmp_path / "killed" / "rgbsigma.npz").exists()
    monkeypatch.setattr(rg, "sample_rays", real)
    resumed = rg.fit_radiance_grid(views, _params(), tmp_path / "killed", checkpoint_every=10, progress=False)
    with np.load(tmp_path / "killed" / "rgbsigma.npz") as f:
        assert np.array_equal(f["rgbsigma"], grid)
    assert resumed["held_out_psnr"] == whole["held_out_psnr"] and not (tmp_path / "killed" / "fit_state.pt").exists()
    monkeypatch.setattr(rg, "sample_rays", dies_at_step_25)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        rg.fit_radiance_grid(views, _params(), tmp_path / "other", checkpoint_every=10, progress=False)
    with pytest.raises(DataError, match=r"a fit with other settings is here \(rays\); give another out="):
        rg.fit_radiance_grid(views, _params(rays=256), tmp_path / "other", checkpoint_every=10, progress=False)


def test_the_export_holds_nerf_mae_sigma_whose_alpha_is_the_voxel_opacity():
    grid = rg.RadianceGrid(5, (0, 0, 0), (2, 2, 2))
    with torch.no_grad():
        grid.grid[:, 0] = torch.randn(5, 5, 5)
        grid.grid[:, 1:] = torch.randn(3, 5, 5, 5)
    out, lo, hi = grid.rgbsigma()
    raw = grid.grid[0].detach().permute(3, 2, 1, 0).numpy()  # (X, Y, Z, 4)
    opacity = 1 - np.exp(-np.exp(raw[..., 0]) * grid.voxel)  # density x one voxel length (0.5 here)
    assert np.allclose(rg.nerf_mae_alpha(out[..., 3]), opacity, atol=1e-6)
    assert np.allclose(out[..., :3], 1 / (1 + np.exp(-raw[..., 1:])), atol=1e-6)
    assert np.allclose(lo, 0) and np.allclose(hi, 2)


def test_the_command_needs_a_scene_and_names_the_key(tmp_path):
    from domainfm.errors import ConfigError
    from domainfm.three_d.commands.radiance_grid import run

    with pytest.raises(ConfigError, match=r"data\.root=<a scene folder with transforms_train\.json> is required"):
        run(compose("radiance_grid", [f"out={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"fit\.resolutions: give grid sizes of at least 4"):
        run(compose("radiance_grid", [f"data.root={LEGO}", f"out={tmp_path}", "fit.resolutions=[2]"]))

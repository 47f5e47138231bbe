"""Fit an explicit radiance grid to posed images (NeRF-synthetic ``transforms_*.json`` layout) and write it as the
``rgbsigma`` grid NeRF-MAE trains on.

The model is plenoxel-style (Fridovich-Keil et al., CVPR 2022) without a network: a dense ``R^3`` grid of a raw
log-density and three raw colours over an axis-aligned box, trilinearly interpolated (``grid_sample``) at points
along each camera ray and composited by the volume-rendering quadrature of NeRF::

    sigma_i = exp(d_i)   (d = the interpolated raw log-density; Instant-NGP's exp activation)
    c_i = sigmoid(r_i)
    alpha_i = 1 - exp(-sigma_i * delta_i),  T_i = prod_{j<i} (1 - alpha_j)
    C = sum_i T_i alpha_i c_i + (1 - sum_i T_i alpha_i) * background      (white, the NeRF-synthetic convention)

loss = MSE(C, pixel) + ``tv`` * total variation of the raw log-density and colours (plenoxels' TV prior), Adam at
``lr`` (0.1 as DVGO / plenoxels' dense-grid rates), resolution doubled on a coarse-to-fine schedule (DVGO, plenoxels).

Deviations from plenoxels, and why: colours are view-independent RGB instead of degree-2 spherical harmonics — an
``rgbsigma`` grid holds one colour per voxel, and NeRF-RPN / NeRF-MAE sample theirs from Instant-NGP with a fixed
view direction, so view dependence would be thrown away at export; no sparse voxel pruning (dense tensors, small
grids on CPU).

Export (``rgbsigma.npz``): ``rgbsigma`` ``(X, Y, Z, 4)`` float32, RGB in [0, 1] and ``sigma`` a log-density stored so
that NeRF-MAE's ``alpha = clip(1 - exp(-exp(sigma) / 100), 0, 1)`` is each voxel's opacity over one voxel length:
``sigma = d + log(100 * voxel)`` (``voxel`` = the grid spacing in scene units); plus ``bbox_min`` / ``bbox_max``
(scene units) and ``resolution``. Grids from a trained NeRF (NeRF-RPN's, the ones NeRF-MAE pretrained on) are
sampled from a view-dependent network at a fixed direction; a fitted grid is the explicit model itself, so its
colours and densities are exactly what renders the training views, with the grid's resolution as the only limit."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from domainfm.errors import DataError
from PIL import Image

NERF_MAE_STEP = 100.0  # NeRF-MAE's alpha = 1 - exp(-exp(sigma) / 100)


@dataclass
class PosedImages:
    """``images`` ``(N, H, W, 3)`` float in [0, 1] (alpha composited over ``background``), ``poses`` ``(N, 4, 4)``
    camera-to-world (Blender/OpenGL axes: the camera looks down -z, y up), ``focal`` in pixels."""

    images: torch.Tensor
    poses: torch.Tensor
    focal: float
    names: list[str] = field(default_factory=list)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


def read_posed_images(
    root: str | Path, split: str = "train", background: float = 1.0, max_size: int | None = None
) -> PosedImages:
    """The views of ``root/transforms_<split>.json`` (NeRF-synthetic / Instant-NGP layout: ``camera_angle_x`` or
    ``fl_x``, frames with ``file_path`` and ``transform_matrix``); ``max_size`` downsamples larger views (box filter)
    and scales the focal length with them."""
    root = Path(root)
    meta_path = root / f"transforms_{split}.json"
    if not meta_path.is_file():
        found = sorted(p.name for p in root.glob("transforms*.json")) if root.is_dir() else []
        hint = f" (found: {', '.join(found)}; give fit.split=)" if found else " (NeRF-synthetic layout expected)"
        raise DataError(f"data.root={root}: no transforms_{split}.json{hint}")
    meta = json.loads(meta_path.read_text())
    frames = meta.get("frames") or []
    if not frames:
        raise DataError(f"{meta_path}: no frames")
    images, poses, names = [], [], []
    for frame in frames:
        path = root / frame["file_path"]
        if not path.suffix:
            path = path.with_suffix(".png")
        try:
            image = Image.open(path)
            image.load()
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable view ({err}); fix or remove the frame from {meta_path.name}") from err
        if max_size and max(image.size) > max_size:
            scale = max_size / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BOX)
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        rgb = rgba[..., :3] * rgba[..., 3:] + background * (1.0 - rgba[..., 3:])
        images.append(torch.from_numpy(rgb))
        poses.append(torch.tensor(frame["transform_matrix"], dtype=torch.float32))
        names.append(str(frame["file_path"]))
    if len({tuple(im.shape) for im in images}) != 1:
        raise DataError(f"{meta_path}: views of different sizes; give fit.max_size= to bring them to one")
    w = images[0].shape[1]
    if "fl_x" in meta:
        focal = float(meta["fl_x"]) * w / float(meta.get("w", w))
    elif "camera_angle_x" in meta:
        focal = 0.5 * w / math.tan(0.5 * float(meta["camera_angle_x"]))
    else:
        raise DataError(f"{meta_path}: neither camera_angle_x nor fl_x is given")
    return PosedImages(torch.stack(images), torch.stack(poses), focal, names)


def camera_rays(pose: torch.Tensor, hw: tuple[int, int], focal: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions ``(H * W, 3)`` through pixel centres, Blender camera axes (NeRF's get_rays)."""
    h, w = hw
    j, i = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    dirs = torch.stack([(i + 0.5 - w / 2) / focal, -(j + 0.5 - h / 2) / focal, -torch.ones_like(i)], dim=-1)
    d = (dirs.reshape(-1, 1, 3) * pose[:3, :3]).sum(-1)
    d = d / d.norm(dim=-1, keepdim=True)
    return pose[:3, 3].expand_as(d), d


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Entry and exit distances of rays through the box (slab method); ``near >= far`` = the ray misses."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


class RadianceGrid(torch.nn.Module):
    """Raw log-density and colour on a dense grid, stored ``(1, 4, Z, Y, X)`` (``grid_sample``'s order)."""

    def __init__(self, resolution: int, bbox_min, bbox_max, init_density: float = -2.0):
        super().__init__()
        self.register_buffer("lo", torch.tensor(bbox_min, dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(bbox_max, dtype=torch.float32))
        grid = torch.zeros(1, 4, resolution, resolution, resolution)
        grid[:, 0] = init_density
        self.grid = torch.nn.Parameter(grid)

    @property
    def resolution(self) -> int:
        return int(self.grid.shape[-1])

    @property
    def voxel(self) -> float:
        """Grid spacing in scene units (the largest side over ``R - 1`` intervals; voxel centres on the box faces)."""
        return float((self.hi - self.lo).max()) / (self.resolution - 1)

    def upsample(self, resolution: int) -> None:
        """Trilinear resampling to a finer grid (the coarse-to-fine step); Adam's moments start again."""
        with torch.no_grad():
            grid = F.interpolate(self.grid.data, size=(resolution,) * 3, mode="trilinear", align_corners=True)
        self.grid = torch.nn.Parameter(grid)

    def query(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density ``(...)`` and colour ``(..., 3)`` at scene points ``(..., 3)``; zero density outside the box."""
        shape = points.shape[:-1]
        coords = (points - self.lo) / (self.hi - self.lo) * 2 - 1
        raw = F.grid_sample(self.grid, coords.reshape(1, -1, 1, 1, 3), align_corners=True, padding_mode="border")
        raw = raw.reshape(4, -1).T.reshape(*shape, 4)
        inside = (coords.abs() <= 1).all(-1)
        sigma = torch.exp(raw[..., 0].clamp(max=15.0)) * inside
        return sigma, torch.sigmoid(raw[..., 1:])

    def render(self, origins, dirs, n_samples: int, background: float = 1.0, jitter: bool = False):
        """Colours ``(R, 3)`` and opacities ``(R,)`` of rays; ``n_samples`` points evenly spaced over each ray's
        segment inside the box (stratified when ``jitter``)."""
        near, far = ray_box(origins, dirs, self.lo, self.hi)
        hit = far > near
        far = torch.where(hit, far, near + 1e-3)
        steps = torch.linspace(0.0, 1.0, n_samples + 1, device=origins.device)[:-1]
        offset = torch.rand(origins.shape[0], n_samples) if jitter else torch.full((origins.shape[0], n_samples), 0.5)
        u = steps + offset / n_samples
        t = near[:, None] + (far - near)[:, None] * u
        delta = ((far - near) / n_samples)[:, None].expand_as(t)
        sigma, color = self.query(origins[:, None] + dirs[:, None] * t[..., None])
        alpha = (1.0 - torch.exp(-sigma * delta)) * hit[:, None]
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], dim=1), dim=1)[:, :-1]
        weights = alpha * trans
        acc = weights.sum(-1)
        rgb = (weights[..., None] * color).sum(1) + (1.0 - acc[:, None]) * background
        return rgb, acc

    def total_variation(self) -> torch.Tensor:
        g = self.grid
        return sum(((g.diff(dim=d)) ** 2).mean() for d in (2, 3, 4))

    def rgbsigma(self, crop: bool = False, margin: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, Y, Z, 4)`` RGB in [0, 1] and NeRF-MAE's sigma (module docstring), and the box of those voxels'
        centres (``bbox_min``, ``bbox_max``); ``crop``: only the occupied voxels' box plus ``margin`` voxels."""
        with torch.no_grad():
            g = self.grid[0].permute(3, 2, 1, 0)  # (4, Z, Y, X) -> (X, Y, Z, 4)
            rgb = torch.sigmoid(g[..., 1:])
            sigma = g[..., :1] + math.log(NERF_MAE_STEP * self.voxel)
            grid = torch.cat([rgb, sigma], dim=-1).numpy().astype(np.float32)
        lo_idx, hi_idx = np.zeros(3, int), np.asarray(grid.shape[:3]) - 1
        occupied = np.argwhere(nerf_mae_alpha(grid[..., 3]) > 0.01)
        if crop and len(occupied):
            lo_idx = np.maximum(occupied.min(0) - margin, 0)
            hi_idx = np.minimum(occupied.max(0) + margin, hi_idx)
            grid = grid[lo_idx[0] : hi_idx[0] + 1, lo_idx[1] : hi_idx[1] + 1, lo_idx[2] : hi_idx[2] + 1]
        lo, step = self.lo.numpy(), (self.hi - self.lo).numpy() / (self.resolution - 1)
        return (
            np.ascontiguousarray(grid),
            (lo + lo_idx * step).astype(np.float32),
            (lo + hi_idx * step).astype(np.float32),
        )


def nerf_mae_alpha(sigma: np.ndarray | torch.Tensor):
    """NeRF-MAE's opacity of a stored sigma: ``clip(1 - exp(-exp(sigma) / 100), 0, 1)``."""
    lib = torch if isinstance(sigma, torch.Tensor) else np
    return lib.clip(1.0 - lib.exp(-lib.exp(sigma) / NERF_MAE_STEP), 0.0, 1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-10)))


@dataclass
class FitParams:
    """``resolutions``: the coarse-to-fine grid sizes, each trained ``iterations / len(resolutions)`` steps;
    ``rays`` per step; ``samples_per_voxel`` points per voxel length along a ray; every ``holdout``-th view is kept
    out of training for the held-out PSNR (0: none); ``crop`` writes only the occupied box (voxels with alpha > 0.01,
    plus 2 voxels), as NeRF-RPN's scene boxes enclose the objects, so the grid is generally not a cube."""

    resolutions: tuple[int, ...] = (32, 64, 96)
    iterations: int = 1500
    rays: int = 2048
    samples_per_voxel: float = 1.5
    lr: float = 0.1
    tv: float = 1.0e-4
    bbox_min: tuple[float, float, float] = (-1.5, -1.5, -1.5)
    bbox_max: tuple[float, float, float] = (1.5, 1.5, 1.5)
    background: float = 1.0
    holdout: int = 10
    crop: bool = True
    seed: int = 0

    def stage(self, step: int) -> int:
        """Index of the resolution trained at ``step``."""
        return min(step * len(self.resolutions) // max(self.iterations, 1), len(self.resolutions) - 1)

    def n_samples(self, resolution: int) -> int:
        side = max(hi - lo for hi, lo in zip(self.bbox_max, self.bbox_min))
        diag = math.dist(self.bbox_min, self.bbox_max)
        return max(8, math.ceil(self.samples_per_voxel * diag / side * (resolution - 1)))


def split_views(n: int, holdout: int) -> tuple[list[int], list[int]]:
    test = list(range(holdout // 2, n, holdout)) if holdout and n > 1 else []
    return [i for i in range(n) if i not in set(test)], test


def sample_rays(views: PosedImages, ids: list[int], n: int, generator: torch.Generator):
    """``n`` random (view, pixel) rays of the views ``ids``: origins, directions, target colours."""
    h, w = views.hw
    view = torch.tensor(ids)[torch.randint(len(ids), (n,), generator=generator)]
    pix = torch.randint(h * w, (n,), generator=generator)
    j, i = (pix // w).float(), (pix % w).float()
    dirs = torch.stack([(i + 0.5 - w / 2) / views.focal, -(j + 0.5 - h / 2) / views.focal, -torch.ones(n)], -1)
    rot = views.poses[view, :3, :3]
    d = (rot @ dirs[..., None])[..., 0]
    return views.poses[view, :3, 3], d / d.norm(dim=-1, keepdim=True), views.images[view, pix // w, pix % w]


@torch.no_grad()
def render_view(grid: RadianceGrid, views: PosedImages, index: int, params: FitParams, chunk: int = 8192):
    """One whole view ``(H, W, 3)`` rendered from the grid."""
    o, d = camera_rays(views.poses[index], views.hw, views.focal)
    n = params.n_samples(grid.resolution)
    out = [grid.render(o[s : s + chunk], d[s : s + chunk], n, params.background)[0] for s in range(0, len(o), chunk)]
    return torch.cat(out).reshape(*views.hw, 3).clamp(0, 1)


def fit_radiance_grid(
    views: PosedImages, params: FitParams, out: str | Path, checkpoint_every: int = 250, progress: bool = True
) -> dict:
    """Fit a grid to ``views`` and write ``out/rgbsigma.npz``, ``out/fit.json`` (PSNR per stage, held-out PSNR),
    ``out/renders.png`` (held-out views: truth | render). A checkpoint ``out/fit_state.pt`` (grid, Adam moments,
    generator state) every ``checkpoint_every`` steps: a killed fit resumes exactly where it stopped."""
    from domainfm.engine.checkpoint import atomic_save, atomic_write_bytes
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_ids, test_ids = split_views(len(views.images), params.holdout)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in params.__dict__.items()}
    state_path = out / "fit_state.pt"
    grid = RadianceGrid(params.resolutions[0], params.bbox_min, params.bbox_max)
    generator = torch.Generator().manual_seed(params.seed)
    opt = torch.optim.Adam(grid.parameters(), lr=params.lr)
    step, history = 0, []
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        if state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise DataError(f"{out}: a fit with other settings is here ({', '.join(changed)}); give another out=")
        if state["grid"].shape[-1] != grid.resolution:
            grid.upsample(state["grid"].shape[-1])
        grid.grid.data.copy_(state["grid"])
        opt = torch.optim.Adam(grid.parameters(), lr=params.lr)
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, history = state["step"], state["history"]
    bar = tqdm(total=params.iterations, initial=step, desc="fitting grid", disable=not progress, unit="step")
    running = []
    while step < params.iterations:
        stage = params.stage(step)
        if params.resolutions[stage] != grid.resolution:
            grid.upsample(params.resolutions[stage])
            opt = torch.optim.Adam(grid.parameters(), lr=params.lr)
        o, d, target = sample_rays(views, train_ids, params.rays, generator)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            rgb, _ = grid.render(o, d, params.n_samples(grid.resolution), params.background, jitter=True)
        mse = F.mse_loss(rgb, target)
        loss = mse + params.tv * grid.total_variation()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running.append(float(mse.detach()))
        bar.update(1)
        if step % 50 == 0 or step == params.iterations:
            history.append(
                {"step": step, "resolution": grid.resolution, "train_psnr": -10 * math.log10(np.mean(running))}
            )
            bar.set_postfix(psnr=f"{history[-1]['train_psnr']:.2f}", res=grid.resolution)
            running = []
        if step % checkpoint_every == 0 and step < params.iterations:
            atomic_save({"settings": settings, "grid": grid.grid.data, "optimizer": opt.state_dict(),
                         "generator": generator.get_state(), "step": step, "history": history}, state_path)  # fmt: skip
    bar.close()
    renders = [(views.images[i], render_view(grid, views, i, params)) for i in test_ids]
    held_out = float(np.mean([psnr(r, t) for t, r in renders])) if renders else None
    rgbsigma, bbox_min, bbox_max = grid.rgbsigma(params.crop)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, rgbsigma=rgbsigma, bbox_min=bbox_min, bbox_max=bbox_max,
                        resolution=np.asarray(rgbsigma.shape[:3], np.int64))  # fmt: skip
    atomic_write_bytes(buffer.getvalue(), out / "rgbsigma.npz")
    occupied = float((nerf_mae_alpha(rgbsigma[..., 3]) > 0.01).mean())
    summary = {
        "views": {"train": len(train_ids), "held_out": len(test_ids)},
        "resolution": grid.resolution,
        "shape": list(rgbsigma.shape[:3]),
        "bbox_min": bbox_min.tolist(),
        "bbox_max": bbox_max.tolist(),
        "held_out_psnr": held_out,
        "occupied_fraction": occupied,
        "history": history,
        "settings": settings,
    }
    atomic_write_bytes(json.dumps(summary, indent=2).encode(), out / "fit.json")
    if renders:
        sheet = [torch.cat([t, r], dim=0) for t, r in renders[:6]]
        Image.fromarray((torch.cat(sheet, dim=1).numpy() * 255).round().astype(np.uint8)).save(out / "renders.png")
    state_path.unlink(missing_ok=True)
    return summary

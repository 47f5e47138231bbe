"""NeRF-MAE (Irshad et al., "NeRF-MAE: Masked AutoEncoders for Self-Supervised 3D Representation Learning for Neural
Radiance Fields", ECCV 2024) on ``rgbsigma`` grids, after the official ``nerf_mae/model/mae/swin_mae3d.py``
(``SwinTransformer_MAE3D_New``), ``nerf_rpn/datasets.py`` and ``nerf_mae/train_mae3d.sh``.

Input (:func:`grid_input`): the ``(W, L, H, 4)`` grid of RGB and raw log-density ``sigma``, channel 3 replaced by
``alpha = clip(1 - exp(-exp(sigma) / 100), 0, 1)`` (``--normalize_density``), no other normalisation, zero-padded at
the high end of each axis to ``R^3`` (``pad_tensor``) with a padding mask (1 = real voxel). Tokens: ``Conv3d`` 4^3
patches. Masking (:func:`block_mask`): blocks of ``4 x 4 x 4`` tokens (16^3 voxels) masked independently with
``p = 0.75`` (so the masked fraction is 0.75 in expectation, not exactly); masked tokens become a learned mask token
and every token goes through the encoder (SimMIM-style). Loss (:func:`nerf_mae_loss`)::

    m_a = [alpha_target > 0.01]                 (voxels)
    m_r = pad * token_mask                      (masked, non-padded voxels)
    L = sum(m_a * |rgb_pred - rgb|^2) / sum(m_a)  +  sum(m_r * (sigmoid(a_pred) - alpha)^2) / sum(m_r)

(RGB on every voxel with alpha > 0.01, masked or visible, summed over the 3 channels per voxel; alpha on masked
non-padded voxels, empty ones included; sums over the whole batch; RGB predicted without activation.) Defaults from
the official code: mask 0.75, AdamW lr 1e-4 and weight decay 1e-3, OneCycle (30 % warm-up), gradient clipping 0.1,
batch 32, R = 160; augmentation: rotation by 90 degrees about z and flips of W and L, each with p = 0.5.

Deviations, each a domainfm choice: the encoder is the core's 3D ViT (one scale, fixed sin-cos positions, cls token)
instead of the official Swin-S 3D (4 stages 96..768 with 3D windows; the issue allows either, and the ViT exports
and loads through timm-style configs like every other domainfm backbone). Because a ViT has no windows, the mask
token keeps its position embedding (SimMIM) where the official Swin overwrites the sum of both. The decoder is the
last stage of the official UNETR-style decoder (``ConvTranspose3d`` k4 s4 to voxels, a residual 3^3 conv block with
instance norm and LeakyReLU 0.01, ``Conv3d`` to 4 channels), fed by the ViT's tokens; the official decoder's
three coarser stages exist only because Swin has coarser stages. Masks are drawn per sample in the data pipeline
(seeded: a resumed run draws the same), where the official code shares one mask across each GPU's batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.errors import DataError
from domainfm.methods.base import Method, StepContext
from torch import nn
from torch.utils.data import Dataset

ALPHA_THRESHOLD = 0.01  # forward_loss: mask = target_alpha > 0.01


def grid_input(rgbsigma: np.ndarray) -> np.ndarray:
    """``(W, L, H, 4)`` RGB + sigma -> ``(4, W, L, H)`` RGB + alpha (float32), as the official loader."""
    from domainfm.three_d.radiance_grid import nerf_mae_alpha

    grid = np.asarray(rgbsigma, dtype=np.float32)
    if grid.ndim != 4 or grid.shape[-1] != 4:
        raise ValueError(f"an rgbsigma grid is (W, L, H, 4), got shape {grid.shape}")
    out = grid.copy()
    out[..., 3] = nerf_mae_alpha(grid[..., 3])
    return np.ascontiguousarray(out.transpose(3, 0, 1, 2))


def pad_grid(grid: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``(4, W, L, H)`` at the high end of each axis to ``size^3``; returns the grid and the padding mask
    ``(size, size, size)`` (True = a real voxel)."""
    pad = [size - s for s in grid.shape[1:]]
    if min(pad) < 0:
        raise ValueError(f"grid {tuple(grid.shape[1:])} is larger than the model's {size}^3")
    real = torch.ones(grid.shape[1:], dtype=torch.bool)
    spec = (0, pad[2], 0, pad[1], 0, pad[0])
    return F.pad(grid, spec), F.pad(real, spec)


def fitted_shape(shape, size: int) -> list[int] | None:
    """The spatial shape scaled by one factor so its longest side is ``size``; None when it already fits."""
    longest = max(shape)
    return None if longest <= size else [max(1, round(s * size / longest)) for s in shape]


def fit_grid(grid: torch.Tensor, size: int) -> torch.Tensor:
    """A grid larger than ``size`` on some side, scaled down by one factor (area averaging of RGB and alpha) so its
    longest side is ``size``; smaller grids unchanged (NeRF-MAE pads, never resizes up)."""
    shape = fitted_shape(grid.shape[1:], size)
    return grid if shape is None else F.interpolate(grid[None], size=shape, mode="area")[0]


def turn_and_flip(grid: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """NeRF-MAE's augmentation of a ``(C, W, L, H)`` grid, three booleans: rotate 90 degrees about z (transpose W and
    L, then flip W: the official order), flip W, flip L."""
    if flips[0]:
        grid = grid.transpose(1, 2).flip(1)
    if flips[1]:
        grid = grid.flip(1)
    if flips[2]:
        grid = grid.flip(2)
    return grid


def block_mask(tokens: tuple[int, int, int], block: int = 4, ratio: float = 0.75, generator=None) -> torch.Tensor:
    """``(prod(tokens),)`` bool token mask: each ``block^3`` block of tokens masked with probability ``ratio``
    (``window_masking_3d``, random strategy; a partial block at a high edge is never masked, as its loop)."""
    counts = [t // block for t in tokens]
    draw = torch.rand(counts, generator=generator) < ratio
    mask = torch.zeros(tokens, dtype=torch.bool)
    mask[: counts[0] * block, : counts[1] * block, : counts[2] * block] = (
        draw.repeat_interleave(block, 0).repeat_interleave(block, 1).repeat_interleave(block, 2)
    )
    return mask.flatten()


def token_mask_to_voxels(mask: torch.Tensor, tokens: tuple[int, int, int], patch: int) -> torch.Tensor:
    """``(B, N)`` token mask -> ``(B, W, L, H)`` voxel mask."""
    m = mask.reshape(mask.shape[0], *tokens)
    for axis in (1, 2, 3):
        m = m.repeat_interleave(patch, axis)
    return m


def nerf_mae_loss(pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor, masked: torch.Tensor) -> dict:
    """The official ``forward_loss`` (module docstring). ``pred`` / ``target`` ``(B, 4, W, L, H)``; ``pad`` and
    ``masked`` ``(B, W, L, H)`` bool (True = real voxel / masked voxel)."""
    pred, target = pred.float(), target.float()
    occupied = (target[:, 3] > ALPHA_THRESHOLD).float()
    removed = (pad & masked).float()
    rgb = (((pred[:, :3] - target[:, :3]) ** 2).sum(1) * occupied).sum() / occupied.sum().clamp_min(1.0)
    alpha = (((torch.sigmoid(pred[:, 3]) - target[:, 3]) ** 2) * removed).sum() / removed.sum().clamp_min(1.0)
    return {"loss": rgb + alpha, "loss_rgb": rgb.detach(), "loss_alpha": alpha.detach()}


class ResBlock3D(nn.Module):
    """UNETR's ``UnetResBlock`` (k3): two conv + instance norm, LeakyReLU 0.01, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm3d(channels, affine=True)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm3d(channels, affine=True)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(y)) + x)


class VoxelDecoder(nn.Module):
    """Tokens ``(B, D, w, l, h)`` -> ``(B, out, W, L, H)``: ``ConvTranspose3d`` (kernel = stride = patch), a residual
    block, a 1^3 conv (the official ``decoder1`` + ``out``)."""

    def __init__(self, dim: int, patch: int, channels: int = 48, out: int = 4):
        super().__init__()
        self.up = nn.ConvTranspose3d(dim, channels, patch, stride=patch)
        self.block = ResBlock3D(channels)
        self.out = nn.Conv3d(channels, out, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.up(tokens)))


class NeRFMAE(Method):
    rank_pooling = "mean"  # the class token is not what the reconstruction trains

    def __init__(self, backbone: nn.Module, decoder_channels: int = 48):
        super().__init__()
        if backbone.patch_embed.proj.in_channels != 4:
            raise ValueError("NeRF-MAE reads RGB + alpha grids: give the backbone in_chans=4")
        self.encoder = MaskedViT(backbone, mask_token=True)
        self.patch = int(backbone.patch_embed.patch_size[0])
        self.decoder = VoxelDecoder(backbone.embed_dim, self.patch, decoder_channels)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.vit

    def tokens(self, grid: torch.Tensor) -> tuple[int, int, int]:
        return tuple(s // self.patch for s in grid.shape[2:])

    def predict(self, grid: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The decoded grid ``(B, 4, W, L, H)`` (RGB raw, alpha as a logit) from the encoder with ``mask``."""
        encoded = self.encoder(grid, mask, mode="replace") if mask is not None else self.encoder(grid)
        patches = encoded.patches.transpose(1, 2).reshape(grid.shape[0], -1, *self.tokens(grid))
        return self.decoder(patches)

    def forward(self, batch: dict[str, Any], ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        grid, pad, mask = batch["image"], batch["pad"].bool(), batch["mask"].bool()
        pred = self.predict(grid, mask)
        return nerf_mae_loss(pred, grid, pad, token_mask_to_voxels(mask, self.tokens(grid), self.patch))

    def rank_inputs(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return batch.get("image")

    def no_weight_decay(self) -> set[str]:
        # no extra exemptions: the official decays every parameter; the engine still exempts norms and biases
        return set()

    def report(self, batch, out_dir, preprocess) -> list:
        from domainfm.three_d.grid_figures import reconstruction_figure

        n = min(4, batch["image"].shape[0])
        with torch.no_grad():
            pred = self.predict(batch["image"][:n], batch["mask"][:n].bool())
        masked = token_mask_to_voxels(batch["mask"][:n].bool(), self.tokens(batch["image"]), self.patch)
        return [reconstruction_figure(batch["image"][:n], pred, masked, Path(out_dir) / "reconstructions.png")]


def list_grids(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data.root={root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.npz") if p.is_file())
    if not files:
        raise DataError(f"data.root={root}: no .npz radiance grids (key rgbsigma); fit one with domainfm radiance_grid")
    return files


def read_grid(path: str | Path) -> np.ndarray:
    """The ``rgbsigma`` array of an ``.npz`` grid file (one-line errors naming the file)."""
    try:
        with np.load(path) as data:
            if "rgbsigma" not in data:
                raise DataError(f"{path}: no 'rgbsigma' array (has: {', '.join(data.files)})")
            grid = data["rgbsigma"]
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: unreadable grid ({type(err).__name__}: {err})") from err
    if grid.ndim != 4 or grid.shape[-1] != 4:
        raise DataError(f"{path}: rgbsigma has shape {grid.shape}; NeRF-MAE grids are (W, L, H, 4)")
    if not np.isfinite(grid).all():
        raise DataError(f"{path}: rgbsigma has NaN or infinite values")
    return grid


class RadianceGrids(Dataset):
    """Every ``.npz`` radiance grid under ``root`` as NeRF-MAE's pretraining reads it: alpha from sigma, scaled down
    to fit ``size`` if larger (ours; the official code requires grids <= its resolution), random 90-degree rotation
    about z and flips of W and L (each p = 0.5, ``augment``), zero padding to ``size^3`` with its mask, and the
    block mask over the ``size / patch`` token grid. Samples: ``image`` ``(4, size, size, size)``, ``pad``, ``mask``."""

    def __init__(self, root: str | Path, size: int = 160, patch: int = 4, mask_block: int = 4,
                 mask_ratio: float = 0.75, augment: bool = True, cache: int = 8):  # fmt: skip
        if size % patch:
            raise DataError(f"grid size {size} is not divisible by the patch size {patch}")
        self.files = list_grids(root)
        self.size, self.patch, self.block, self.ratio = int(size), int(patch), int(mask_block), float(mask_ratio)
        self.augment, self.cache = bool(augment), int(cache)
        self._read: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def grid(self, index: int) -> torch.Tensor:
        """``(4, W, L, H)`` RGB + alpha of file ``index``, fitted to the size (cached per worker)."""
        if index not in self._read:
            if len(self._read) >= self.cache:
                self._read.pop(next(iter(self._read)))
            self._read[index] = fit_grid(torch.from_numpy(grid_input(read_grid(self.files[index]))), self.size)
        return self._read[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        return self.prepare(index, generator)

    def prepare(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        grid = self.grid(index)
        if self.augment:
            grid = turn_and_flip(grid, torch.rand(3, generator=generator) < 0.5)
        image, pad = pad_grid(grid.contiguous(), self.size)
        tokens = (self.size // self.patch,) * 3
        return {"image": image, "pad": pad, "mask": block_mask(tokens, self.block, self.ratio, generator)}

    def preprocess_info(self, img_size=None) -> dict:
        return {"input": "rgbsigma", "channels": ["r", "g", "b", "alpha"],
                "alpha": "clip(1 - exp(-exp(sigma) / 100), 0, 1)", "padding": "zeros at the high end"}  # fmt: skip

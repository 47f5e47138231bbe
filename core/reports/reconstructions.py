"""MAE reconstruction figure: input, masked input and reconstruction side by side (volumes: the middle axial
slice)."""

from __future__ import annotations

from pathlib import Path

import torch
from domainfm.objectives.mae import patchify, unpatchify


def _mid_axial(x: torch.Tensor) -> torch.Tensor:
    return x[..., x.shape[-1] // 2].transpose(-1, -2).flip(-1, -2)


@torch.no_grad()
def mae_reconstruction_figure(
    method, images: torch.Tensor, masks: torch.Tensor, mean, std, out: str | Path, channels=None, stretch: bool = False
) -> Path:
    """Rows: samples; columns: original, visible patches, reconstruction (masked patches predicted, visible patches
    copied). With ``norm_pix_loss`` the predicted patches are mapped back with each original patch's mean/std.
    ``channels``: the three (or one) channels to draw (default: the first three); ``stretch``: map each drawn
    channel's 2nd-98th percentile over the inputs to [0, 1] (multispectral reflectance is dark otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    method.eval()
    pred = method.reconstruct(images, masks).float()
    target = patchify(images, method.patch_size)
    if method.norm_pix_loss:
        mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mu
    m = masks[..., None].float()
    grid = method.grid(images)
    C = images.shape[1]
    recon = unpatchify(pred * m + target * (1 - m), grid, method.patch_size, C)
    visible = unpatchify(target * (1 - m), grid, method.patch_size, C)
    if images.ndim == 5:  # volumes (B, C, X, Y, Z) in RAS: the middle axial slice, anterior up, right on the left
        images, visible, recon = (_mid_axial(x) for x in (images, visible, recon))
        stretch = True  # z-scored MR / windowed CT: not display values
    mean_t = torch.tensor(list(mean), dtype=images.dtype)[:, None, None]
    std_t = torch.tensor(list(std), dtype=images.dtype)[:, None, None]

    pick = list(channels) if channels else list(range(min(C, 3)))
    lo, hi = torch.zeros(len(pick), 1, 1), torch.ones(len(pick), 1, 1)
    if stretch:
        values = (images.cpu() * std_t + mean_t)[:, pick].transpose(0, 1).reshape(len(pick), -1).float()
        lo, hi = values.quantile(0.02, dim=1)[:, None, None], values.quantile(0.98, dim=1)[:, None, None]

    def show(x):
        x = (((x.cpu() * std_t + mean_t)[pick] - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
        return (x[0] if len(pick) == 1 else x.permute(1, 2, 0)).numpy()

    n = images.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), dpi=100, squeeze=False)
    for i in range(n):
        for j, (img, title) in enumerate(((images[i], "input"), (visible[i], "visible"), (recon[i], "reconstruction"))):
            axes[i, j].imshow(show(img), cmap="gray" if len(pick) == 1 else None, vmin=0, vmax=1)
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out

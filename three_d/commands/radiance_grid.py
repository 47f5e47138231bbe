"""``domainfm radiance_grid data.root=<scene> out=<dir>``: fit an explicit radiance grid to posed images and write
NeRF-MAE's ``rgbsigma.npz`` (declared in ``three_d/domain.yaml``; config ``three_d/configs/radiance_grid.yaml``)."""

from __future__ import annotations

from domainfm.commands.common import job_output
from domainfm.errors import ConfigError
from domainfm.three_d.radiance_grid import FitParams, fit_radiance_grid, read_posed_images
from omegaconf import DictConfig, OmegaConf


def render(summary: dict, out) -> str:
    psnr = summary["held_out_psnr"]
    views, shape = summary["views"], " x ".join(map(str, summary["shape"]))
    lines = [
        f"grid          {out}/rgbsigma.npz  ({shape} voxels of a {summary['resolution']}^3 fit; "
        f"{summary['occupied_fraction']:.1%} with alpha > 0.01)",
        f"views         {views['train']} fitted, {views['held_out']} held out",
        f"PSNR          {psnr:.2f} dB on the held-out views"
        if psnr is not None
        else "PSNR          (no held-out view)",
        f"renders       {out}/renders.png" if psnr is not None else "",
        f"pretrain      domainfm pretrain recipe=three_d/nerf_mae data.root={out}",
    ]
    return "\n".join(line for line in lines if line)


def run(cfg: DictConfig) -> dict:
    for node, key, hint in (
        (cfg.data, "data.root", "a scene folder with transforms_train.json"),
        (cfg, "out", "the output folder"),
    ):
        if OmegaConf.is_missing(node, key.split(".")[-1]):
            raise ConfigError(f"{key}=<{hint}> is required: domainfm radiance_grid data.root=<scene> out=<folder>")
    fit = OmegaConf.to_container(cfg.fit, resolve=True)
    if not fit["resolutions"] or min(fit["resolutions"]) < 4:
        raise ConfigError("fit.resolutions: give grid sizes of at least 4, coarse to fine, e.g. [32, 64, 96]")
    params = FitParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in fit.items()})
    views = read_posed_images(cfg.data.root, cfg.data.split, params.background, cfg.data.max_size)
    out = job_output(cfg.out)
    summary = fit_radiance_grid(views, params, out, cfg.checkpoint_every, cfg.progress)
    print(render(summary, out), flush=True)
    return summary

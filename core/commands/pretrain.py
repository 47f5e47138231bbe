"""``domainfm pretrain``: build the recipe's dataset, transform and method, train, export, report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch
from domainfm.commands.common import apply_data_limits, output_dir, write_config
from domainfm.common import distributed as dist_utils
from domainfm.engine.export import export_backbone
from domainfm.engine.runlock import RunLock
from domainfm.engine.runtime import seed_everything
from domainfm.engine.trainer import Trainer, TrainerConfig
from domainfm.errors import ConfigError
from domainfm.validation import out_of_range
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("domainfm")


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    values = OmegaConf.to_container(cfg.trainer, resolve=True)
    values.update(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, strict_data=cfg.data.strict)
    return TrainerConfig.from_dict(values)


def _method_report(method, dataset, transform, run_dir, preprocess: dict) -> None:
    """Let the method draw its figures (e.g. MAE reconstructions) on a few fixed samples."""
    from domainfm.data.collate import collate_samples
    from domainfm.data.sampling import SeededDataset

    samples = SeededDataset(dataset, transform)
    n = min(6, len(dataset))
    batch = collate_samples([samples[(i, 12345 + i)] for i in range(n)])
    for path in method.report(batch, run_dir / "report", preprocess):
        log.info("report: %s", path)


def data_preprocess(dataset, cfg: DictConfig) -> dict:
    """What the dataset knows about the scale of its samples (a dataset's optional ``preprocess_info(img_size)``,
    e.g. the tiles' MPP, their size and the MPP the model input is seen at); it wins over the recipe's values."""
    info = getattr(dataset, "preprocess_info", None)
    if info is None:
        return {}
    found = dict(info(cfg.preprocess.img_size))
    for key, value in found.items():
        given = cfg.preprocess.get(key)
        if given is not None and given != value:
            log.warning("preprocess.%s=%s but the data has %s: the export records %s", key, given, value, value)
    return found


def run(cfg: DictConfig) -> dict:
    apply_data_limits(cfg)
    run_dir = output_dir(cfg)
    tcfg = trainer_config(cfg)
    problem = out_of_range(cfg)  # the CLI checked already; configs composed in-process get the same limits
    if problem:
        raise ConfigError(problem)
    main = int(os.environ.get("RANK", "0")) == 0  # the process group starts later, in the Trainer
    with RunLock(run_dir, "domainfm pretrain") if main else contextlib.nullcontext():
        return _pretrain(cfg, run_dir, tcfg, main)


def _load_selected(method, run_dir, tcfg: TrainerConfig, summary) -> str:
    """The exported weights: the last step's, or with ``trainer.select=rankme`` those of the highest RankMe measured
    from ``trainer.select_after`` on (``checkpoints/best_rank.pt``), loaded into ``method``."""
    if tcfg.select != "rankme":
        return f"last step ({summary.steps})"
    path = Path(run_dir) / "checkpoints" / "best_rank.pt"
    if not path.exists():
        log.warning(
            "trainer.select=rankme: no rank was measured after step %d (trainer.select_after); exporting the last step",
            tcfg.select_from(),
        )
        return f"last step ({summary.steps}): no rank measured after step {tcfg.select_from()}"
    best = torch.load(path, map_location="cpu", weights_only=True)
    method.load_state_dict(best["model"])
    log.info(
        "exporting step %d of %d: highest RankMe %.2f after step %d",
        best["step"],
        summary.steps,
        best["rankme"],
        tcfg.select_from(),
    )
    return (
        f"step {best['step']} of {summary.steps}: highest RankMe ({best['rankme']:.2f}) after step {tcfg.select_from()}"
    )


def _pretrain(cfg: DictConfig, run_dir, tcfg: TrainerConfig, main: bool) -> dict:
    if main:
        write_config(cfg, run_dir)
    dataset = instantiate(cfg.data.dataset)
    transform = instantiate(cfg.data.transform) if cfg.data.get("transform") else None
    seed_everything(tcfg.seed)
    method = instantiate(cfg.method)
    weights = None
    if cfg.data.get("balanced"):
        if not hasattr(dataset, "sample_weights"):
            raise ConfigError(
                f"data.balanced=true needs a dataset with sample_weights(); {type(dataset).__name__} has none"
            )
        weights = dataset.sample_weights()
    trainer = Trainer(method, dataset, run_dir, tcfg, transform=transform, sample_weights=weights, desc="pretrain")
    summary = trainer.fit()
    full = trainer.full_method()  # a collective under FSDP: every rank takes part
    if dist_utils.is_main():
        selected = _load_selected(full, run_dir, tcfg, summary)
        preprocess = {**OmegaConf.to_container(cfg.preprocess, resolve=True), **data_preprocess(dataset, cfg)}
        card = {
            "recipe": cfg.name,
            "description": cfg.get("description") or None,
            "method": type(full).__name__,
            "steps": summary.steps,
            "data": f"{len(dataset)} samples ({type(dataset).__name__}), {len(summary.skipped_files)} unreadable",
            "selected": selected,
        }
        settings = OmegaConf.to_container(cfg, resolve=True)
        export = export_backbone(
            full.backbone,
            run_dir / "export",
            preprocess,
            tag=f"domainfm-{cfg.name}",
            card=card,
            extra_files=lambda folder: full.export_files(folder, settings),
        )
        summary.export = str(export)
        from domainfm.reports.curves import plot_loss_curve

        plot_loss_curve(run_dir)
        _method_report(full, dataset, transform, run_dir, preprocess)
        (run_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
        print(summary.render(), flush=True)
    dist_utils.barrier()
    return summary.to_dict()

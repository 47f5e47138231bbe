"""``domainfm finetune data.chips=<chips> backbone=<...>``: supervised finetuning on chips labeled by their
majority Sentinel-2 SCL class (the ``chips`` kind's finetune hook, ``remote_sensing/domain.yaml``).

The core's recipe (``domainfm.evaluation.finetune``: layer-wise lr decay, best-on-val checkpoint, test once) on
chips read with the weights' own bands and normalisation, spatial splits as ``domainfm evaluate data.chips=``.
Training views are multispectral-safe (:class:`~domainfm.remote_sensing.augment.SpectralView`): random resized
crop (``finetune.crop_scale``), ``finetune.hflip`` / ``finetune.vflip`` and 90-degree rotations (overhead
imagery has no "up"); no colour jitter. The finetuned export keeps the bands and normalisation of the input
weights, so it reads chips the same way."""

from __future__ import annotations

from typing import Any

from domainfm.commands.common import output_dir, write_config
from domainfm.commands.finetune import FinetuneInput, finetune_backbones
from domainfm.engine.runlock import RunLock
from domainfm.evaluation.datasets import LabeledSet, save_splits
from domainfm.remote_sensing.augment import SpectralView
from domainfm.remote_sensing.commands.evaluate_chips import LabeledChips, labeled_chips_of, open_chips
from omegaconf import DictConfig


def finetune(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    with RunLock(out, "domainfm finetune"):
        write_config(cfg, out)
        data, rows = labeled_chips_of(cfg)
        save_splits(data, out / "splits.csv")
        row_of = dict(zip(data.ids, rows))

        def chip_input(source: str) -> FinetuneInput:
            model, preprocess, chips = open_chips(cfg, source)

            def make_set(subset: LabeledSet, view) -> LabeledChips:
                subset_rows = [row_of[i] for i in subset.ids]
                return LabeledChips(chips, subset_rows, subset.labels, subset.ids, view)

            view = training_view(cfg.finetune, preprocess.size[0], preprocess.mean, preprocess.std)
            return model, preprocess, make_set, view

        return finetune_backbones(cfg, out, data, chip_input, what="chips")


def training_view(ft: DictConfig, size: int, mean, std) -> SpectralView:
    """Crop (``finetune.crop_scale``), ``finetune.hflip`` / ``finetune.vflip``, 90-degree turns, the weights'
    mean/std."""
    return SpectralView(
        size,
        scale=tuple(ft.crop_scale),
        hflip=float(ft.hflip),
        vflip=float(ft.vflip),
        rot90=True,
        mean=mean,
        std=std,
    )

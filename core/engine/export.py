"""Export a 2D ViT backbone as ``model.safetensors`` + ``config.json`` that timm loads with
``timm.create_model("local-dir:<dir>", pretrained=True)``; ``pretrained_cfg`` records the preprocessing the
weights expect (channels, input size, mean/std); domain keys such as MPP or band names go into a top-level
``"domainfm"`` entry of ``config.json`` (``load_backbone`` merges them into ``model.pretrained_cfg["domainfm"]``)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import timm
from torch import nn


def export_backbone(
    backbone: nn.Module, out_dir: str | Path, preprocess: dict[str, Any], tag: str = "domainfm"
) -> Path:
    """Write the backbone to ``out_dir`` atomically (a temporary sibling folder renamed into place)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    in_chans = int(preprocess.get("in_chans", backbone.patch_embed.proj.in_channels))
    size = preprocess.get("img_size", backbone.patch_embed.img_size)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cfg = {
        "tag": tag,
        "input_size": [in_chans, h, w],
        "mean": list(map(float, preprocess["mean"])),
        "std": list(map(float, preprocess["std"])),
        "license": None,
    }
    extra = {k: v for k, v in preprocess.items() if k not in ("mean", "std", "img_size", "in_chans")}
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        timm.models.save_for_hf(backbone, str(tmp), model_config={"pretrained_cfg": cfg}, safe_serialization=True)
        config = json.loads((tmp / "config.json").read_text())
        config["pretrained_cfg"].pop("license", None)
        if extra:  # top level: timm's PretrainedCfg accepts no unknown keys, and ignores unknown top-level ones
            config["domainfm"] = extra
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir

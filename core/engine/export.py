"""Export a ViT (or any timm) backbone as ``model.safetensors`` + ``config.json`` that timm loads with
``timm.create_model("local-dir:<dir>", pretrained=True)``, plus a model card (``README.md``, as timm's
``push_to_hf_hub`` writes one).

``pretrained_cfg`` records the preprocessing the weights were trained and are evaluated with — channels, input
size, mean/std, and the resize: bilinear, no crop (``crop_pct`` 1.0), as domainfm's views — so
``timm.data.resolve_data_config`` + ``create_transform`` on the export builds domainfm's own pipeline. Provenance
of weights the backbone was loaded from (hub id, url, licence of ImageNet weights) is not carried over. Domain
keys such as MPP, tile size or band names go into a top-level ``"domainfm"`` entry of ``config.json``
(``load_backbone`` merges them into ``model.pretrained_cfg["domainfm"]``); timm ignores unknown top-level keys
but rejects unknown ``pretrained_cfg`` keys. A backbone that is not a timm model (the 3D ViT, a domain's point
encoder) is written in the same layout with its ``architecture`` and ``model_class``
(:func:`_export_native_backbone`)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import timm
from torch import nn

# what describes the architecture's interface (kept from the model's pretrained_cfg); everything else is ours
_STRUCTURAL = (
    "architecture",
    "num_classes",
    "pool_size",
    "first_conv",
    "classifier",
    "fixed_input_size",
    "custom_load",
)
_CORE_KEYS = ("mean", "std", "img_size", "in_chans", "license")


def data_config(preprocess: dict[str, Any], in_chans: int, size: tuple[int, int]) -> dict[str, Any]:
    """timm's data config for domainfm's evaluation view: resize to ``size`` (bilinear, antialiased), no crop."""
    return {
        "input_size": (in_chans, *size),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": tuple(map(float, preprocess["mean"])),
        "std": tuple(map(float, preprocess["std"])),
    }


def export_backbone(
    backbone: nn.Module,
    out_dir: str | Path,
    preprocess: dict[str, Any],
    tag: str = "domainfm",
    card: dict[str, Any] | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write the backbone to ``out_dir`` atomically (a temporary sibling folder renamed into place).

    ``card``: what the model card says beyond the preprocessing (``recipe``, ``description``, ``method``,
    ``data`` summary, ``steps``); ``preprocess["license"]`` (default ``other``) is its licence field.
    ``extra_files(folder)`` writes what else the export holds (``Method.export_files``) before it is moved in place.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if getattr(backbone, "domainfm_architecture", None):
        return _export_native_backbone(backbone, out_dir, preprocess, tag, card or {}, extra_files)
    in_chans = int(preprocess.get("in_chans") or backbone.patch_embed.proj.in_channels)  # a CNN: from preprocess
    size = preprocess.get("img_size") or backbone.patch_embed.img_size
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    data_cfg = data_config(preprocess, in_chans, (h, w))
    ours = {"tag": tag, **{k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()}}
    extra = {k: v for k, v in preprocess.items() if k not in _CORE_KEYS}
    source_cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    clean = {k: source_cfg[k] for k in _STRUCTURAL if k in source_cfg}
    backbone.pretrained_cfg = {**clean, **ours}  # no provenance or domain keys of loaded weights leak into the file
    try:
        with _staged(out_dir, extra_files) as tmp:
            timm.models.save_for_hf(
                backbone,
                str(tmp),
                model_config={"pretrained_cfg": ours},
                data_config=dict(data_cfg),
                safe_serialization=True,
            )
            config = json.loads((tmp / "config.json").read_text())
            if extra:  # top level: timm's PretrainedCfg accepts no unknown keys, and ignores unknown top-level ones
                config["domainfm"] = extra
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            (tmp / "README.md").write_text(model_card(config, preprocess, card or {}))
    finally:
        backbone.pretrained_cfg = source_cfg
    return out_dir


@contextlib.contextmanager
def _staged(out_dir: Path, extra_files: Callable[[Path], None] | None) -> Iterator[Path]:
    """A temporary sibling folder to write the export into; with ``extra_files`` written, it replaces
    ``out_dir`` in one rename (a killed export leaves the previous one whole)."""
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        yield tmp
        if extra_files is not None:
            extra_files(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_USE_2D = [
    "```python",
    "import timm",
    'model = timm.create_model("local-dir:<this folder>", pretrained=True)',
    "cfg = timm.data.resolve_data_config({}, model=model)",
    "transform = timm.data.create_transform(**cfg)  # the preprocessing above",
    "```",
]
_USE_NATIVE = [
    "```python",
    "from domainfm.backbones.loading import load_backbone",
    'model = load_backbone("<this folder>")  # input as described above',
    "```",
]


def _export_native_backbone(backbone, out_dir: Path, preprocess, tag: str, card, extra_files) -> Path:
    """A backbone that is not a timm model (the 3D ViT, a domain's point encoder: a class with
    ``domainfm_architecture``, ``export_config(preprocess) -> (model_args, pretrained_cfg)`` and
    ``from_export``) in the same layout: ``config.json`` (``architecture``, ``model_class``, ``model_args``,
    ``pretrained_cfg``) + ``model.safetensors`` + model card; :func:`~domainfm.backbones.loading.load_backbone`
    reads it back."""
    from safetensors.torch import save_file

    model_args, input_cfg = backbone.export_config(preprocess)
    cls = type(backbone)
    config = {
        "architecture": cls.domainfm_architecture,
        "model_class": f"{cls.__module__}:{cls.__qualname__}",
        "num_classes": 0,
        "num_features": int(backbone.num_features),
        "global_pool": "token",
        "model_args": model_args,
        "pretrained_cfg": {"tag": tag, **input_cfg},
    }
    extra = {k: v for k, v in preprocess.items() if k not in _CORE_KEYS}
    if extra:
        config["domainfm"] = extra
    with _staged(out_dir, extra_files) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "README.md").write_text(model_card(config, preprocess, card))
    return out_dir


def model_card(config: dict[str, Any], preprocess: dict[str, Any], card: dict[str, Any]) -> str:
    """A Hugging Face model card: YAML front matter (licence, library, tags) and what a user needs to use the
    weights right. Names no file or folder of the training data (archives hold patient data): counts only."""
    cfg = config["pretrained_cfg"]
    license_ = preprocess.get("license") or "other"
    library = "domainfm" if config.get("model_class") else "timm"
    front = ["---", f"library_name: {library}", f"license: {license_}", "tags:", "- image-feature-extraction"]
    front += ["- timm"] if library == "timm" else []
    front += ["- domainfm", "---", ""]
    title = card.get("recipe") or cfg.get("tag", "domainfm")
    lines = [f"# {title}", ""]
    if card.get("description"):
        lines += [str(card["description"]), ""]
    lines += ["A domainfm backbone (`" + config["architecture"] + "`, headless).", ""]
    lines += ["## Training", ""]
    for key, label in (("method", "method"), ("steps", "optimizer steps"), ("selected", "weights"), ("data", "data")):
        if card.get(key) is not None:
            lines.append(f"- {label}: {card[key]}")
    lines += ["", "## Preprocessing the weights expect", ""]
    if cfg.get("input_description"):  # a native backbone that does not read images (e.g. point clouds)
        lines.append(f"- input: {cfg['input_description']}")
    else:
        c, *size = cfg["input_size"]
        unit = "voxels" if len(size) == 3 else "px"
        lines.append(
            f"- input: {c} channel(s), {' x '.join(map(str, size))} {unit}, resized {cfg['interpolation']}, no crop"
        )
        lines.append(f"- mean {list(cfg['mean'])}, std {list(cfg['std'])} (after scaling pixels to [0, 1])")
    for key, value in (config.get("domainfm") or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        "## Use",
        "",
        *(_USE_NATIVE if config.get("model_class") else _USE_2D),
        "",
        f"Licence: {license_} (set `preprocess.license=` in the recipe to declare the licence of your weights).",
        "",
    ]
    return "\n".join(front + lines)

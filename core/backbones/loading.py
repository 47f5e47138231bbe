"""Load a 2D ViT backbone from wherever users keep one.

``source`` may be:

- a domainfm run folder (``<run>/export`` is used) or an export / Hugging Face style folder
  (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``);
- ``hf-hub:<org>/<name>``: the same layout on the Hugging Face hub (the local HF cache is used when offline);
- ``timm:<name>`` or a bare timm model name (e.g. ``vit_small_patch16_224.augreg_in21k``): timm's own weights;
- a checkpoint file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) together with ``arch=<timm name>``; nested
  ``model``/``state_dict``/``teacher`` dicts and ``module.``/``backbone.``/``encoder.vit.`` prefixes are stripped,
  and timm's converters handle DINOv2, OpenCLIP and other published layouts.

When ``in_chans`` differs from the weights, the patch-embedding filters are adapted (:func:`adapt_channels`);
when ``img_size`` differs, the position embedding is resampled (bicubic, timm's ``resample_abs_pos_embed``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from domainfm.errors import ConfigError
from timm.models.vision_transformer import VisionTransformer

VIT3D_ARCHITECTURE = "domainfm_vit3d"  # the export's name of VisionTransformer3D (domainfm.engine.export)
# Backbones that are not timm models: the export names its class (``model_class``, a trusted package); exports
# of the 3D ViT written before that key existed are found by their architecture.
NATIVE_CLASSES = {VIT3D_ARCHITECTURE: "domainfm.backbones.vit3d:VisionTransformer3D"}

log = logging.getLogger(__name__)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_PREFIXES = ("module.", "backbone.", "encoder.vit.", "student.backbone.", "teacher.backbone.", "model.")


def adapt_channels(weight: torch.Tensor, in_chans: int, mode: str = "mean") -> torch.Tensor:
    """Adapt patch-embedding filters ``(O, C, kh, kw)`` (or 3D ``(O, C, kd, kh, kw)``) from ``C`` to ``in_chans``
    input channels.

    - ``in_chans == 1``: ``mode="mean"`` averages the input filters (default); ``mode="sum"`` sums them (timm's
      convention: the response to a grey image equals the response to that image replicated on ``I`` channels).
    - ``in_chans > C``: the filters are repeated cyclically and scaled by ``C / in_chans`` (repeat-and-rescale, as
      timm's ``adapt_input_conv``); when ``in_chans`` is a multiple of ``C`` an input with equal channels gives the
      same response as the source model.
    - ``1 < in_chans < C``: the first ``in_chans`` filters, scaled by ``C / in_chans``.
    """
    src = weight.shape[1]
    if in_chans == src:
        return weight
    w = weight.float()
    if in_chans == 1:
        if mode not in ("mean", "sum"):
            raise ValueError(f"channel adaptation mode must be 'mean' or 'sum', got {mode!r}")
        out = w.mean(1, keepdim=True) if mode == "mean" else w.sum(1, keepdim=True)
    else:
        reps = -(-in_chans // src)
        out = w.repeat(1, reps, *[1] * (w.ndim - 2))[:, :in_chans] * (src / in_chans)
    return out.to(weight.dtype)


def _strip(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "teacher", "student"):
        if key in state and isinstance(state[key], dict) and not isinstance(state[key], torch.Tensor):
            state = state[key]
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state) and any(k.startswith(prefix) and "blocks." in k for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return unchunk_blocks(state)


_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def unchunk_blocks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2 training checkpoints with ``block_chunks > 0`` name blocks ``blocks.<chunk>.<i>.``, where ``i`` is
    the global block index (each chunk is padded with Identity modules up to its first block, as DINOv2's
    ``BlockChunk``); timm names them ``blocks.<i>.``."""
    if not any(_CHUNKED.match(k) for k in state):
        return state
    return {_CHUNKED.sub(r"blocks.\2.", k): v for k, v in state.items()}


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"backbone weights {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _strip(load_file(str(path)))
    return _strip(torch.load(path, map_location="cpu", weights_only=True))


def _folder_config(folder: Path) -> tuple[dict, Path]:
    config = json.loads((folder / "config.json").read_text())
    weights = next((folder / f for f in _WEIGHT_FILES if (folder / f).exists()), None)
    if weights is None:
        raise ConfigError(f"{folder} has config.json but no weights ({', '.join(_WEIGHT_FILES)})")
    return config, weights


def _resolve(source: str, arch: str | None) -> tuple[str, dict, dict, dict[str, torch.Tensor] | None]:
    """``(architecture, model_args, pretrained_cfg, state_dict or None for timm's own weights)``."""
    if source.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        repo = source[len("hf-hub:") :]
        offline = hub_offline()
        try:
            config_path = Path(hf_hub_download(repo, "config.json", local_files_only=bool(offline)))
        except Exception as err:  # noqa: BLE001 - any failure here means: not to be had
            raise ConfigError(_unreachable(source, offline, err)) from err
        for name in _WEIGHT_FILES:
            try:
                hf_hub_download(repo, name, local_files_only=bool(offline))
                break
            except Exception:  # noqa: BLE001 - try the next file name
                continue
        source = str(config_path.parent)
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "export" / "config.json").exists():
            path = path / "export"
        if not (path / "config.json").exists():
            raise ConfigError(f"{path} is neither a run folder nor an export folder (no config.json)")
        config, weights = _folder_config(path)
        architecture = config.get("architecture") or arch
        pretrained_cfg = dict(config.get("pretrained_cfg", {}))
        if config.get("domainfm"):
            pretrained_cfg["domainfm"] = config["domainfm"]
        if config.get("model_class"):
            pretrained_cfg["model_class"] = config["model_class"]
        return architecture, dict(config.get("model_args", {})), pretrained_cfg, read_weights(weights)
    if path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        if not arch:
            raise ConfigError(
                f"{path} is a bare checkpoint: also give the architecture, e.g. arch=vit_base_patch16_224"
            )
        return arch, {}, {}, read_weights(path)
    if not source.startswith("timm:") and (path.is_absolute() or source.startswith((".", "~")) or "/" in source):
        raise ConfigError(
            f"backbone={source}: no such file or folder; give a run or export folder, a checkpoint file (with arch=), "
            "hf-hub:<org>/<name> or timm:<name>"
        )
    name = source[len("timm:") :] if source.startswith("timm:") else source
    return name, {}, {}, None


_PROVENANCE = (
    "url",
    "hf_hub_id",
    "hf_hub_filename",
    "file",
    "source",
    "license",
    "origin_url",
    "paper_ids",
    "paper_name",
    "notes",
    "description",
    "state_dict",
    "tag",
)
_HEADLESS = ("head", "fc_norm")


def check_keys(source: str, architecture: str, missing: list[str], unexpected: list[str]) -> None:
    """Weights that do not fill the architecture, or hold tensors it has no place for, would give other outputs
    than the model they came from: both are errors (as timm's strict loading), naming the keys and, for the
    usual cause, the fix. Only the classifier head (dropped for a headless backbone) and MIM mask tokens pass."""
    missing = [k for k in missing if not k.startswith(_HEADLESS)]
    unexpected = [k for k in unexpected if not k.startswith((*_HEADLESS, "mask_token"))]
    if not missing and not unexpected:
        return
    hint = ""
    if any(".ls1." in k or ".ls2." in k for k in unexpected):
        hint = "; the weights have LayerScale (ls1/ls2): set backbone.init_values (e.g. 1e-5, as UNI / DINOv2)"
    elif any(".ls1." in k or ".ls2." in k for k in missing):
        hint = "; the architecture has LayerScale the weights lack: set backbone.init_values=null"
    elif any(k.startswith("reg_token") for k in unexpected + missing):
        hint = "; the register tokens differ: set backbone.reg_tokens to the weights' count"
    parts = [f"{len(missing)} missing (e.g. {missing[:3]})"] if missing else []
    parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"] if unexpected else []
    raise ConfigError(f"weights from {source} do not fit {architecture}: {', '.join(parts)}{hint}")


def hub_offline(host: str = "huggingface.co", timeout: float = 2.0) -> str | None:
    """Why the hub cannot be reached (``HF_HUB_OFFLINE`` set, or no TCP connection within ``timeout`` seconds), or
    ``None`` when it can: then downloads are tried, else only the local cache is read (no 30-55 s of retries)."""
    import socket

    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return "offline (HF_HUB_OFFLINE)"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return f"unreachable ({host}:443)"
    return None


@contextlib.contextmanager
def _offline_hub(offline: bool):
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def _unreachable(source: str, offline: str | None, err: BaseException) -> str:
    if not offline:
        return f"backbone={source}: could not be loaded ({' '.join(str(err).split())[:160]})"
    return (
        f"backbone={source}: not in the local Hugging Face cache and the hub is {offline}; download it where there "
        "is network and pass the folder (backbone=<folder with config.json + model.safetensors>) or a checkpoint "
        "file with arch=<timm name>"
    )


def _is_vit_architecture(architecture: str) -> bool:
    """Whether timm builds ``architecture`` with a patch embedding (ViT, DeiT, BEiT, EVA: ``img_size`` argument),
    by the first convolution timm's default config names; an architecture timm has no config for counts as one."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture)
    return cfg is None or str(cfg.first_conv or "").startswith("patch_embed")


def load_backbone(
    source: str | Path,
    in_chans: int | None = None,
    img_size: int | None = None,
    arch: str | None = None,
    channel_mode: str = "mean",
    dynamic_img_size: bool = True,
    pretrained: bool = True,
    **model_args: Any,
) -> VisionTransformer:
    """Build the ViT described by ``source`` (see the module docstring) with its weights, headless.

    The returned model's ``pretrained_cfg`` holds the preprocessing of the weights (``input_size``, ``mean``,
    ``std`` and domainfm's extra keys), with ``input_size`` updated to ``in_chans``/``img_size`` when given.
    Extra keyword arguments go to ``timm.create_model`` (e.g. ``depth`` for a bare checkpoint of a custom ViT).
    """
    import timm

    architecture, saved_args, pretrained_cfg, state = _resolve(str(source), arch)
    native = pretrained_cfg.pop("model_class", None) or NATIVE_CLASSES.get(architecture)
    if native is not None:
        cls = native_class(native, str(source))
        return cls.from_export(source, saved_args, pretrained_cfg, state, in_chans, img_size, channel_mode, model_args)
    args = {**saved_args, **model_args, "num_classes": 0, "dynamic_img_size": dynamic_img_size}
    if img_size is not None:
        args["img_size"] = img_size
    if not _is_vit_architecture(architecture):  # a CNN (timm ResNet): no patch embedding, any input size
        args.pop("dynamic_img_size")
        args.pop("img_size", None)
    src_chans = int(saved_args.get("in_chans", (pretrained_cfg.get("input_size") or [3])[0]))
    if state is None:  # timm's own hub weights: timm adapts channels (sum for 1 channel) and positions itself
        offline = hub_offline() if pretrained else None
        try:
            with _offline_hub(bool(offline)):
                model = timm.create_model(architecture, pretrained=pretrained, **args, in_chans=in_chans or 3)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ConfigError(
                    f"backbone={source}: {err}; or give a run/export folder or a checkpoint file"
                ) from err
            raise ConfigError(_unreachable(source, offline, err)) from err
        except OSError as err:  # huggingface_hub's LocalEntryNotFoundError, connection errors
            raise ConfigError(_unreachable(source, offline, err)) from err
    else:
        if "patch_embed.proj.weight" in state:
            src_chans = state["patch_embed.proj.weight"].shape[1]
        args["in_chans"] = in_chans or src_chans
        model = timm.create_model(architecture, pretrained=False, **args)
        if "patch_embed.proj.weight" in state:
            state["patch_embed.proj.weight"] = adapt_channels(
                state["patch_embed.proj.weight"], args["in_chans"], channel_mode
            )
        if hasattr(model, "patch_embed"):
            from timm.models.vision_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn(state, model)
        missing, unexpected = model.load_state_dict(state, strict=False)
        check_keys(source, architecture, missing, unexpected)
    cfg = dict(model.pretrained_cfg)
    if state is not None:  # the architecture's default cfg describes timm's weights, not these
        for key in _PROVENANCE:
            cfg.pop(key, None)
        cfg["tag"] = pretrained_cfg.get("tag") or "domainfm-loaded"
    cfg.update({k: v for k, v in pretrained_cfg.items() if v is not None})
    if hasattr(model, "patch_embed"):
        chans = model.patch_embed.proj.in_channels
        h, w = model.patch_embed.img_size
    else:  # a CNN: the first convolution's channels, the recorded input size (or the one asked for)
        chans = model.get_submodule(cfg.get("first_conv") or "conv1").in_channels
        h, w = (img_size, img_size) if img_size else tuple(cfg.get("input_size", (chans, 224, 224)))[1:]
    cfg["input_size"] = (chans, h, w)
    for key in ("mean", "std"):
        values = list(cfg.get(key) or [])
        if values and len(values) != chans:
            cfg[key] = [float(sum(values) / len(values))] * chans
    model.pretrained_cfg = cfg
    model.domainfm_weights = str(source)
    return model


def native_class(name: str, source: str) -> type:
    """The class ``package.module:Class`` an export names, imported only from a trusted package (the core, the
    installed domains): a config file on disk never makes other code run."""
    import importlib

    from domainfm.plugins import trusted_packages

    module, _, attr = name.partition(":")
    if not attr or module.split(".", 1)[0] not in trusted_packages():
        raise ConfigError(f"backbone={source}: model_class={name!r} is not a class of domainfm or an installed domain")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"backbone={source}: model_class={name!r} cannot be imported ({err})") from err


def loaded_cfg(pretrained_cfg: dict, input_size: tuple, chans: int | None) -> dict:
    """The ``pretrained_cfg`` of a loaded native backbone: provenance dropped, ``input_size`` as built, mean / std
    averaged to ``chans`` channels when those changed."""
    cfg = {k: v for k, v in pretrained_cfg.items() if v is not None and k not in _PROVENANCE}
    cfg["tag"] = pretrained_cfg.get("tag") or "domainfm-loaded"
    cfg["input_size"] = tuple(input_size)
    for key in ("mean", "std"):
        values = list(cfg.get(key) or [])
        if chans is not None and values and len(values) != chans:
            cfg[key] = [float(sum(values) / len(values))] * chans
    return cfg

"""Text towers for the CLIP methods and loading open_clip checkpoints into them (offline).

Towers:

- :func:`open_clip_text_tower`: open_clip's causal text transformer (CLIP BPE, argmax/EOT pooling, linear
  projection), as in ``ViT-B-32`` etc.;
- :func:`hf_text_tower`: open_clip's ``HFTextEncoder`` over a Hugging Face encoder (XLM-RoBERTa for the
  multilingual ``xlm-roberta-base-ViT-B-32`` and RS-M-CLIP), built from a config only — a preset name, a local folder
  with ``config.json`` or a dict — so nothing is downloaded; the weights come from the checkpoint.

:func:`load_open_clip_state` maps an open_clip ``CLIP``/``CustomTextCLIP`` state dict (``visual.*``, ``text.*`` or
the built-in text transformer keys, ``logit_scale``; as in ``open_clip_pytorch_model.bin`` of a hub repo such as the
published RS-M-CLIP weights) onto domainfm's CLIP: the OpenAI-style ``visual.*`` keys go through timm's own
converter (``_convert_openai_clip``) into the timm ViT, ``visual.proj`` (``width x embed``) becomes the image
projection's weight (transposed), the text keys load into the text tower unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

# xlm-roberta-base's config.json on the Hugging Face hub (FacebookAI/xlm-roberta-base): the text tower of open_clip's
# xlm-roberta-base-ViT-B-32 and of RS-M-CLIP. Kept here so building the tower needs no download.
HF_PRESETS: dict[str, dict[str, Any]] = {
    "xlm-roberta-base": {
        "model_type": "xlm-roberta",
        "vocab_size": 250002,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }
}


def open_clip_text_tower(
    embed_dim: int = 256,
    width: int = 256,
    heads: int = 4,
    layers: int = 4,
    context_length: int = 77,
    vocab_size: int = 49408,
) -> nn.Module:
    """open_clip's causal text transformer (argmax/EOT pooling, linear projection), randomly initialised; pair with
    ``open_clip.get_tokenizer("ViT-B-32")`` (its BPE vocabulary ships in the wheel)."""
    from open_clip.transformer import TextTransformer

    return TextTransformer(
        context_length=context_length,
        vocab_size=vocab_size,
        width=width,
        heads=heads,
        layers=layers,
        output_dim=embed_dim,
    )


def hf_config(config: str | dict[str, Any]):
    """A ``transformers`` config from a preset name (:data:`HF_PRESETS`), a folder holding ``config.json`` or a
    dict with ``model_type``."""
    from transformers import AutoConfig

    if isinstance(config, str) and config in HF_PRESETS:
        config = HF_PRESETS[config]
    elif isinstance(config, str | Path):
        path = Path(config)
        file = path / "config.json" if path.is_dir() else path
        if not file.exists():
            raise ValueError(
                f"text tower config {config!r}: not a preset ({', '.join(HF_PRESETS)}) and no config.json there; "
                "give a local Hugging Face model folder"
            )
        config = json.loads(file.read_text())
    config = dict(config)
    return AutoConfig.for_model(config.pop("model_type"), **config)


def hf_text_tower(
    embed_dim: int = 512,
    config: str | dict[str, Any] = "xlm-roberta-base",
    pooler_type: str = "mean_pooler",
    proj_type: str = "mlp",
) -> nn.Module:
    """open_clip's ``HFTextEncoder`` on a randomly initialised Hugging Face encoder (see :func:`hf_config`).
    Defaults are open_clip's ``xlm-roberta-base-ViT-B-32`` (``hf_pooler_type`` mean_pooler, ``hf_proj_type`` mlp:
    ``Linear(d, (d + e) / 2) -> GELU -> Linear(., e)``, no biases). Pair with the encoder's own tokenizer
    (``ImageCaptions(tokenizer=<local folder>)``)."""
    from open_clip.hf_model import HFTextEncoder

    cfg = hf_config(config)
    tower = HFTextEncoder("local", output_dim=embed_dim, config=cfg, pooler_type=pooler_type, proj_type=proj_type)
    if pooler_type != "cls_pooler" and getattr(tower.transformer, "pooler", None) is not None:
        tower.transformer.pooler = None  # as open_clip builds it from a name (add_pooling_layer=False): no such keys
    tower.hf_config_dict = cfg.to_diff_dict() | {"model_type": cfg.model_type}  # written next to an export
    return tower


OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # what open_clip's hub repos hold


def _hub_file(source: str) -> Path:
    """``hf-hub:<org>/<name>``: its open_clip weights file through the Hugging Face cache (``HF_HUB_OFFLINE``: the
    cache only)."""
    from domainfm.backbones.loading import hub_offline
    from huggingface_hub import hf_hub_download

    repo, offline, errors = source[len("hf-hub:") :], bool(hub_offline()), []
    for name in OPEN_CLIP_FILES:
        try:
            return Path(hf_hub_download(repo, name, local_files_only=offline))
        except Exception as err:  # noqa: BLE001 - try the next file name
            errors.append(f"{name}: {type(err).__name__}")
    raise FileNotFoundError(
        f"{source}: no open_clip weights ({'; '.join(errors)}); download them where the hub is reachable and give "
        "the local file"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``state_dict`` / ``model`` wrappers and DDP ``module.``
    prefixes removed); ``hf-hub:<org>/<name>`` reads the repo's open_clip weights file (e.g. RS-M-CLIP's)."""
    path = _hub_file(path) if str(path).startswith("hf-hub:") else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: give the open_clip checkpoint (open_clip_pytorch_model.bin)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


_BUILTIN_TEXT = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def load_open_clip_state(
    backbone: nn.Module, image_proj: nn.Linear, text_tower: nn.Module, logit_scale: nn.Parameter, state: dict
) -> None:
    """Load an open_clip state dict into the towers (see the module docstring); any key left over or missing is an
    error naming it."""
    from timm.models.vision_transformer import _convert_openai_clip

    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        raise ValueError("not an open_clip ViT checkpoint: no visual.* keys")
    proj = visual.pop("visual.proj", None)
    vit_state = _convert_openai_clip(visual, backbone)
    missing, unexpected = backbone.load_state_dict(vit_state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"open_clip image tower does not match the backbone: missing {missing}, unexpected {unexpected}"
        )
    if proj is not None:
        if tuple(proj.t().shape) != tuple(image_proj.weight.shape):
            raise ValueError(f"visual.proj {tuple(proj.shape)} does not fit the image projection {image_proj}")
        image_proj.weight.data.copy_(proj.t())
    if any(k.startswith("text.") for k in state):
        text = {k.removeprefix("text."): v for k, v in state.items() if k.startswith("text.")}
    else:
        text = {k: v for k, v in state.items() if k.startswith(_BUILTIN_TEXT)}
    missing, unexpected = text_tower.load_state_dict(text, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"open_clip text tower does not match: missing {missing}, unexpected {unexpected}")
    if "logit_scale" in state:
        logit_scale.data.copy_(state["logit_scale"].reshape(()))

"""2D Vision Transformers built by timm (any channel count, image size, patch size, registers)."""

from __future__ import annotations

import timm
from timm.models.vision_transformer import VisionTransformer


def create_vit(
    name: str = "vit_tiny_patch16_224",
    img_size: int = 224,
    patch_size: int | None = None,
    in_chans: int = 3,
    reg_tokens: int = 0,
    drop_path_rate: float = 0.0,
    grad_checkpointing: bool = False,
    dynamic_img_size: bool = True,
    weights: str | None = None,
    **kwargs,
) -> VisionTransformer:
    """Create a headless timm ViT (``num_classes=0``).

    ``dynamic_img_size`` lets one model take global (e.g. 224 px) and local (e.g. 96 px) crops; the
    position embedding is resampled on the fly for other grids. ``weights`` starts from published or earlier
    weights (anything :func:`~domainfm.backbones.loading.load_backbone` reads: ``hf-hub:MahmoodLab/UNI``, a timm
    name, an export or run folder, a checkpoint file); channels and positions are adapted to ``in_chans`` and
    ``img_size``.
    """
    args = dict(img_size=img_size, in_chans=in_chans, num_classes=0, dynamic_img_size=dynamic_img_size)
    if patch_size is not None:
        args["patch_size"] = patch_size
    if reg_tokens:
        args["reg_tokens"] = reg_tokens
    if drop_path_rate:
        args["drop_path_rate"] = drop_path_rate
    if weights:
        from domainfm.backbones.loading import load_backbone

        extra = {k: v for k, v in args.items() if k not in ("img_size", "in_chans", "num_classes", "dynamic_img_size")}
        model = load_backbone(
            weights,
            in_chans=in_chans,
            img_size=img_size,
            arch=name,
            dynamic_img_size=dynamic_img_size,
            **extra,
            **kwargs,
        )
    else:
        model = timm.create_model(name, pretrained=False, **args, **kwargs)
        model.domainfm_weights = None  # freshly initialised: only then may a method (MAE) re-initialise it
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"{name} is not a timm VisionTransformer; domainfm's 2D backbones need one")
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def patch_grid(model: VisionTransformer, height: int, width: int) -> tuple[int, int]:
    """Number of patches along H and W for an input of ``height x width`` pixels."""
    ph, pw = model.patch_embed.patch_size
    return height // ph, width // pw


def layer_id(name: str, num_blocks: int) -> int:
    """BEiT/MAE/DINOv2 layer index of a ViT parameter name, for layer-wise lr decay: 0 for the embeddings and tokens
    (``cls_token``, ``pos_embed``, ``reg_token``, ``patch_embed``, ``mask_token``), ``i + 1`` for ``blocks.i``,
    ``num_blocks + 1`` for everything after the blocks."""
    if name.startswith(("cls_token", "pos_embed", "reg_token", "patch_embed", "mask_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_blocks + 1

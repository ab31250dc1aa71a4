"""``create_backbone``: an encoder by name with weights from any spec, ready to train or fine-tune."""

from __future__ import annotations

import logging

from torch import nn

from polypssl.backbones.models import build_encoder, fill_sincos_pos_embed, freeze_pos_embed
from polypssl.backbones.registry import backbone_info
from polypssl.backbones.weights import SINCOS_METHODS, describe_weights, parse_weights, resolve_weights

logger = logging.getLogger(__name__)


def keeps_fixed_pos_embed(
    arch: str,
    weights: str = "random",
    *,
    sincos_pos_embed: bool = False,
    trainable_pos_embed: bool | None = None,
    pretrain_method: str | None = None,
) -> bool:
    """Whether a ViT's position embedding stays frozen.

    Default: frozen for the fixed 2-D sin-cos embedding, i.e. ``sincos_pos_embed=True`` or weights
    pretrained with MoCo v3 or MAE (official releases and our own files alike), as the study kept them.
    ``trainable_pos_embed`` overrides the default either way. ResNets have none: always False.
    Pass ``pretrain_method`` when already known, to avoid reading the weights again for ``auto:`` specs.
    """
    if backbone_info(arch).family != "vit":
        return False
    if trainable_pos_embed is not None:
        return not trainable_pos_embed
    if sincos_pos_embed:
        return True
    method = pretrain_method or describe_weights(weights)["pretrain_method"]
    return method in SINCOS_METHODS


def create_backbone(
    arch: str,
    weights: str = "random",
    image_size: int = 224,
    *,
    sincos_pos_embed: bool = False,
    trainable_pos_embed: bool | None = None,
) -> nn.Module:
    """Encoder ``arch`` (torchvision ResNet with ``fc = Identity`` / timm ViT with ``num_classes=0``).

    ``forward`` returns pooled features ``[N, num_features]`` (global average pool for ResNets, cls token
    for ViTs). Weights are loaded strictly (see ``load_encoder_state_dict``). ``sincos_pos_embed`` starts a
    random ViT from the fixed 2-D sin-cos position embedding of MoCo v3 / MAE; with loaded weights the loaded
    embedding is kept. See :func:`keeps_fixed_pos_embed` for when the embedding is frozen.
    The model carries ``arch``, ``num_features``, ``weights`` and ``pretrain`` (the weight description).
    """
    info = backbone_info(arch)
    spec = parse_weights(weights)
    if spec.kind == "random":
        model = build_encoder(arch, image_size)
        description = describe_weights(weights)
    else:
        state_dict, description = resolve_weights(arch, weights, image_size)
        model = build_encoder(arch, image_size, init=False)
        model.load_state_dict(state_dict, strict=True)
    if info.family == "vit":
        if sincos_pos_embed and spec.kind == "random":
            fill_sincos_pos_embed(model)
        elif sincos_pos_embed:
            logger.info("%s: keeping the position embedding loaded from %s", arch, weights)
        fixed = keeps_fixed_pos_embed(
            arch, weights, sincos_pos_embed=sincos_pos_embed, trainable_pos_embed=trainable_pos_embed,
            pretrain_method=description["pretrain_method"],
        )
        if fixed:
            freeze_pos_embed(model)
            logger.info("%s: position embedding is fixed (pass trainable_pos_embed=True to train it)", arch)
    model.arch = info.arch
    model.num_features = info.num_features
    model.weights = weights
    model.pretrain = description
    return model

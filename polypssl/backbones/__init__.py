"""Encoders by name and every source of their weights: official SSL releases, supervised, ours, random.

``create_backbone(arch, weights, image_size)`` builds a torchvision ResNet / timm ViT encoder;
``load_encoder_state_dict`` gives the same weights as a state dict for other wrappers (e.g.
segmentation_models_pytorch encoders); ``save_backbone`` writes our safetensors; ``polypssl convert``
(``polypssl.backbones.convert``) turns official checkpoints into such files.
"""

from polypssl.backbones.factory import create_backbone, keeps_fixed_pos_embed
from polypssl.backbones.formats import read_checkpoint
from polypssl.backbones.models import build_encoder, freeze_pos_embed, sincos_2d_pos_embed
from polypssl.backbones.registry import BACKBONES, BackboneInfo, backbone_info, list_backbones
from polypssl.backbones.weights import (
    PRETRAIN_METHODS,
    WeightSpec,
    align_state_dict,
    describe_weights,
    infer_arch,
    load_encoder_state_dict,
    parse_weights,
    save_backbone,
    supervised_source,
)

__all__ = [
    "BACKBONES",
    "PRETRAIN_METHODS",
    "BackboneInfo",
    "WeightSpec",
    "align_state_dict",
    "backbone_info",
    "build_encoder",
    "create_backbone",
    "describe_weights",
    "freeze_pos_embed",
    "infer_arch",
    "keeps_fixed_pos_embed",
    "list_backbones",
    "load_encoder_state_dict",
    "parse_weights",
    "read_checkpoint",
    "save_backbone",
    "sincos_2d_pos_embed",
    "supervised_source",
]

"""Encoder names and what each one is: the study's two encoders plus small variants for tests and demos.

Names are timm-style (``resnet50``, ``vit_b16``); every entry says which torchvision or timm model it is,
so state dicts always use that library's key names and load into it (and into
segmentation_models_pytorch encoders built on it) without renaming.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from polypssl.errors import PolypsslError


@dataclass(frozen=True)
class BackboneInfo:
    """One registry entry. ``model_name`` is the torchvision (ResNets) or timm (ViTs) model name."""

    arch: str
    family: str  # "resnet" or "vit"
    model_name: str
    num_features: int
    supervised_default: str  # torchvision weight enum member or timm pretrained tag
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_ENTRIES = (
    BackboneInfo("resnet50", "resnet", "resnet50", 2048, "IMAGENET1K_V1"),
    BackboneInfo("resnet18", "resnet", "resnet18", 512, "IMAGENET1K_V1"),
    # The study's ViT-B/16 supervised weights are augreg_in21k_ft_in1k; timm's own default tag differs.
    BackboneInfo("vit_b16", "vit", "vit_base_patch16_224", 768, "augreg_in21k_ft_in1k", 768, 12, 12, 16),
    BackboneInfo("vit_small16", "vit", "vit_small_patch16_224", 384, "augreg_in21k_ft_in1k", 384, 12, 6, 16),
    BackboneInfo("vit_tiny16", "vit", "vit_tiny_patch16_224", 192, "augreg_in21k_ft_in1k", 192, 12, 3, 16),
)
BACKBONES: dict[str, BackboneInfo] = {info.arch: info for info in _ENTRIES}


def list_backbones() -> list[str]:
    """Registered encoder names, study encoders first."""
    return list(BACKBONES)


def backbone_info(arch: str) -> BackboneInfo:
    """The registry entry for ``arch``; an unknown name is an error that lists the valid ones."""
    try:
        return BACKBONES[arch]
    except (KeyError, TypeError):
        raise PolypsslError(
            f"unknown encoder {arch!r}; valid encoders: {', '.join(BACKBONES)}"
        ) from None

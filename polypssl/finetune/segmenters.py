"""The study's two segmenters: ResNet + DeepLabV3+ and ViT + DPT (docs/protocol.md sections 2 and 8).

Both come from segmentation_models_pytorch with the study's settings; only the encoder weights
differ between the models of the study, and they come from :mod:`polypssl.backbones` (any weight
spec) in torchvision / timm key names, loaded strictly so a wrong checkpoint cannot pass silently.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from polypssl.errors import PolypsslError

log = logging.getLogger(__name__)

#: DPT taps these ViT blocks (0-based): the study's 3rd, 6th, 9th and 12th of ViT-B's 12.
DPT_BLOCKS = (2, 5, 8, 11)
DPT_INTERMEDIATE_CHANNELS = (96, 192, 384, 768)
DPT_FUSION_CHANNELS = 256
#: Keys an encoder checkpoint may carry that the segmenter has no place for (classifier heads).
HEAD_PREFIXES = ("fc.", "head.", "fc_norm.", "head_drop.")


def _info(encoder: str) -> Any:
    from polypssl.backbones import backbone_info

    return backbone_info(encoder)  # an unknown name is a PolypsslError listing the valid ones


def encoder_family(encoder: str) -> str:
    """``vit`` or ``cnn`` for an encoder name known to :mod:`polypssl.backbones`."""
    return "vit" if _info(encoder).family == "vit" else "cnn"


def decoder_for(encoder: str) -> str:
    """The decoder the study pairs with ``encoder``: ``deeplabv3plus`` (CNN) or ``dpt`` (ViT)."""
    return "dpt" if encoder_family(encoder) == "vit" else "deeplabv3plus"


def _drop_heads(state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    dropped = sorted({k.split(".")[0] for k in state if k.startswith(HEAD_PREFIXES)})
    if dropped:
        log.info("%s: dropping classifier keys %s (no place for them in a segmenter)", what, ", ".join(f"{d}.*" for d in dropped))
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    # nn.Module's own method: smp's ResNet encoder overrides it and drops the result
    result = nn.Module.load_state_dict(module, state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise PolypsslError(
            f"{what} do not fit the encoder: missing {result.missing_keys[:5]}"
            f"{' ...' if len(result.missing_keys) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{' ...' if len(result.unexpected_keys) > 5 else ''}. Check that the weight spec is for this encoder "
            "(e.g. resnet50 weights for encoder=resnet50) and convert it with `polypssl convert` if needed"
        )


def _check_size(encoder: str, image_size: int, multiple: int) -> None:
    if image_size <= 0 or image_size % multiple:
        raise PolypsslError(
            f"image_size={image_size} does not suit encoder {encoder}: it must be a positive multiple of {multiple}"
        )


def build_segmenter(encoder: str, weights: str = "random", image_size: int = 224) -> nn.Module:
    """A one-logit segmenter for ``encoder`` with its encoder initialised from ``weights``.

    CNN encoders get DeepLabV3+ at output stride 16; ViT encoders get DPT tapping blocks
    2, 5, 8, 11 (readout ignored, reassemble channels 96/192/384/768, fusion 256). Output:
    ``[N, 1, image_size, image_size]`` logits. The model carries ``encoder_name``,
    ``decoder_name``, ``image_size`` and ``weights`` attributes.
    """
    import segmentation_models_pytorch as smp

    from polypssl.backbones import load_encoder_state_dict

    info = _info(encoder)
    family = encoder_family(encoder)
    what = f"weights '{weights}' for encoder {encoder}"
    if family == "vit":
        _check_size(encoder, image_size, info.patch_size or 16)
        model = smp.DPT(
            encoder_name=f"tu-{info.model_name}",
            encoder_weights=None,
            encoder_depth=len(DPT_BLOCKS),
            encoder_output_indices=list(DPT_BLOCKS),
            decoder_readout="ignore",
            decoder_intermediate_channels=DPT_INTERMEDIATE_CHANNELS,
            decoder_fusion_channels=DPT_FUSION_CHANNELS,
            classes=1,
            img_size=image_size,
        )
        vit = model.encoder.model
        if len(vit.blocks) != DPT_BLOCKS[-1] + 1:
            raise PolypsslError(f"encoder {encoder} has {len(vit.blocks)} blocks; DPT needs 12 (blocks 2, 5, 8, 11)")
        if weights != "random":
            state = _drop_heads(load_encoder_state_dict(encoder, weights, image_size), what)
            # the classifier is reset before loading, the final norm kept so that a checkpoint without it fails
            vit.reset_classifier(0)
            _load_strict(vit, state, what)
        # The final norm and the classifier are never used by DPT; removing them keeps every parameter
        # in the graph, which DistributedDataParallel requires.
        vit.prune_intermediate_layers(list(DPT_BLOCKS), prune_norm=True, prune_head=True)
        decoder = "dpt"
    else:
        _check_size(encoder, image_size, 16)
        model = smp.DeepLabV3Plus(
            encoder_name=info.model_name,  # smp's ResNet encoders take torchvision's names and keys
            encoder_weights=None,
            encoder_output_stride=16,
            classes=1,
        )
        if weights != "random":
            state = _drop_heads(load_encoder_state_dict(encoder, weights, image_size), what)
            _load_strict(model.encoder, state, what)
        decoder = "deeplabv3plus"
    model.encoder_name = encoder
    model.decoder_name = decoder
    model.image_size = image_size
    model.weights = weights
    return model


def freeze_encoder(model: nn.Module) -> nn.Module:
    """Train the decoder only: encoder parameters frozen, its normalisation statistics too."""
    model.freeze_encoder()
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_parameters(model: nn.Module) -> int:
    """Parameters outside the encoder (decoder + segmentation head)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("encoder."))

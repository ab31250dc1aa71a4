"""Building the bare encoders (torchvision ResNet without ``fc``, timm ViT without ``head``).

Kept separate from weight handling so that shapes can be checked against a model built on the meta device
(no memory, no initialisation cost).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from polypssl.backbones.registry import BackboneInfo, backbone_info
from polypssl.errors import PolypsslError


def check_image_size(info: BackboneInfo, image_size: int) -> None:
    if not isinstance(image_size, int) or image_size <= 0:
        raise PolypsslError(f"image_size must be a positive integer, got {image_size!r}")
    if info.family == "vit" and image_size % info.patch_size:
        raise PolypsslError(
            f"{info.arch}: image_size {image_size} is not a multiple of the patch size {info.patch_size}; "
            f"use e.g. {max(info.patch_size, image_size // info.patch_size * info.patch_size)}"
        )


def build_encoder(arch: str, image_size: int = 224, *, init: bool = True) -> nn.Module:
    """A freshly initialised encoder: the library's own initialisation, classifier removed.

    ``init=False`` skips the random initialisation (the weights are uninitialised memory) for callers
    that load a full state dict right after; a ViT-B initialises in seconds on a CPU.
    """
    info = backbone_info(arch)
    check_image_size(info, image_size)
    if not init:
        with torch.device("meta"):
            model = build_encoder(arch, image_size)
        persistent = set(model.state_dict())
        if all(name in persistent for name, _ in model.named_buffers()):
            return model.to_empty(device="cpu")
        return build_encoder(arch, image_size)  # a buffer the state dict would not fill: initialise
    if info.family == "resnet":
        import torchvision

        model = torchvision.models.get_model(info.model_name, weights=None)
        model.fc = nn.Identity()
    else:
        import timm

        model = timm.create_model(info.model_name, pretrained=False, num_classes=0, img_size=image_size)
    model.arch = info.arch
    model.num_features = info.num_features
    return model


@functools.lru_cache(maxsize=32)
def encoder_shapes(arch: str, image_size: int = 224) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the encoder's state dict, from a model built on the meta device."""
    with torch.device("meta"):
        model = build_encoder(arch, image_size)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def sincos_2d_pos_embed(embed_dim: int, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """The fixed 2-D sin-cos position embedding of MoCo v3 / MAE, shape ``[1, prefix + H*W, embed_dim]``.

    Per patch (row ``r``, column ``c``) and frequency ``w_k = 1 / 10000**(k / (D/4))``, ``k < D/4``, the
    embedding is ``[sin(r w), cos(r w), sin(c w), cos(c w)]`` (MoCo v3's order; MAE's swaps the two axes,
    which is the same embedding transposed). Prefix (cls) positions are zeros.
    Hand-written because timm's ``build_sincos2d_pos_embed`` interleaves the blocks differently
    (``sin r, sin c, cos r, cos c``) from the releases whose weights polypssl loads.
    """
    if embed_dim % 4:
        raise PolypsslError(f"the 2-D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    h, w = grid_size
    pos_dim = embed_dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(pos_dim, dtype=torch.float64) / pos_dim))
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    out_r = rows.flatten()[:, None] * omega[None, :]
    out_c = cols.flatten()[:, None] * omega[None, :]
    emb = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    prefix = torch.zeros(num_prefix_tokens, embed_dim, dtype=torch.float64)
    return torch.cat([prefix, emb], dim=0)[None].float()


def fill_sincos_pos_embed(model: nn.Module) -> None:
    """Overwrite a timm ViT's position embedding with the fixed 2-D sin-cos one."""
    grid = tuple(model.patch_embed.grid_size)
    prefix = getattr(model, "num_prefix_tokens", 1)
    with torch.no_grad():
        model.pos_embed.copy_(sincos_2d_pos_embed(model.pos_embed.shape[-1], grid, prefix))


def freeze_pos_embed(model: nn.Module) -> int:
    """Stop training every position embedding in ``model`` (also inside wrappers); returns how many."""
    count = 0
    for name, param in model.named_parameters():
        if name == "pos_embed" or name.endswith(".pos_embed"):
            param.requires_grad_(False)
            count += 1
    return count

"""Projection and prediction MLPs of MoCo v3 and Barlow Twins, and their encoder initialisations.

Hand-written (a few lines) because both official recipes use bias-free linear layers with a
BatchNorm after every hidden layer and a specific last layer (MoCo v3: BatchNorm without affine
on the projector, and on the ViT predictor; Barlow Twins: a plain linear layer), which lightly's
heads do not reproduce exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


def build_mlp(dims: Sequence[int], last_bn: bool = True) -> nn.Sequential:
    """Linear(bias=False) -> BN -> ReLU for every hidden layer, then Linear(bias=False).

    ``dims`` lists input, hidden and output widths (``[2048, 4096, 256]`` is a 2-layer MLP).
    ``last_bn`` appends ``BatchNorm1d(affine=False)`` after the last linear layer.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output widths, got {list(dims)}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


def zero_init_residual(resnet: nn.Module) -> None:
    """Zero the last BN scale of every residual block (torchvision's ``zero_init_residual=True``).

    The MoCo v3 and Barlow Twins releases build their ResNet-50 this way; applied only when
    training from random weights.
    """
    for m in resnet.modules():
        last_bn = getattr(m, "bn3", None) if hasattr(m, "conv3") else getattr(m, "bn2", None)
        if hasattr(m, "downsample") and isinstance(last_bn, nn.BatchNorm2d):
            nn.init.zeros_(last_bn.weight)


def init_vit_mocov3(vit: nn.Module) -> None:
    """The MoCo v3 release's ViT initialisation (random weights only).

    Xavier-uniform linear layers with qkv treated as three separate matrices, zero biases, a
    near-zero class token and a uniform patch embedding scaled like a linear layer.
    """
    for name, m in vit.named_modules():
        if isinstance(m, nn.Linear):
            if "qkv" in name:
                bound = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if getattr(vit, "cls_token", None) is not None:
        nn.init.normal_(vit.cls_token, std=1e-6)
    proj = vit.patch_embed.proj
    bound = math.sqrt(6.0 / float(proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] + proj.out_channels))
    nn.init.uniform_(proj.weight, -bound, bound)
    if proj.bias is not None:
        nn.init.zeros_(proj.bias)

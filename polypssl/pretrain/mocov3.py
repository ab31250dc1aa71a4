"""MoCo v3 (Chen, Xie & He, 2021) for ResNet and ViT encoders, as in the official release.

A query encoder (backbone + projector + predictor) and a momentum encoder (an exponential
moving average of backbone + projector, no gradient) see two views of each image; the loss is
the symmetric InfoNCE of docs/protocol.md section 6 with keys gathered from every process.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polypssl.distributed import gather_no_grad, rank
from polypssl.pretrain.heads import build_mlp, init_vit_mocov3, zero_init_residual


@dataclass
class MoCoV3Config:
    """MoCo v3 hyper-parameters; ``None`` picks the official value for the encoder family."""

    temperature: float | None = None  # 1.0 for ResNet, 0.2 for ViT
    momentum: float = 0.99  # momentum at the start of training ...
    momentum_end: float = 1.0  # ... raised to this value along a half cosine
    dim: int = 256  # projector / predictor output width
    mlp_dim: int = 4096  # hidden width of projector and predictor
    projector_layers: int | None = None  # 2 for ResNet, 3 for ViT
    predictor_layers: int = 2
    freeze_patch_embed: bool = True  # ViT: random, fixed patch projection (stability trick)
    sincos_pos_embed: bool = True  # ViT: fixed 2-D sin-cos position embedding
    official_init: bool = True  # random weights: the release's initialisation (see heads.py)


def mocov3_loss(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """One direction of the MoCo v3 loss: ``2 * tau * CE(q @ k_all.T / tau, arange(N) + rank * N)``.

    ``q`` and ``k`` are L2-normalised here; ``k`` is gathered from all processes without gradient,
    so each query's positive is its own key and the negatives are every other key of the global
    batch. Returns the mean over this process's queries.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    k_all = gather_no_grad(k)
    logits = q @ k_all.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
    return 2 * temperature * F.cross_entropy(logits, labels)


def momentum_at(progress: float, start: float, end: float = 1.0) -> float:
    """Cosine schedule of the momentum coefficient from ``start`` (progress 0) to ``end`` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _create_backbone(encoder: str, weights: str, image_size: int, **kwargs: Any) -> nn.Module:
    from polypssl.backbones import create_backbone

    return create_backbone(encoder, weights, image_size, **kwargs)


def is_vit(module: nn.Module) -> bool:
    return hasattr(module, "patch_embed") and hasattr(module, "blocks")


class MoCoV3(nn.Module):
    """MoCo v3; ``backbone`` is the encoder to export, ``forward(batch)`` returns the training loss."""

    def __init__(self, encoder: str, image_size: int, cfg: MoCoV3Config | None = None, weights: str = "random") -> None:
        super().__init__()
        cfg = cfg or MoCoV3Config()
        self.cfg = cfg
        probe_vit = encoder.startswith("vit")
        self.backbone = _create_backbone(
            encoder, weights, image_size, sincos_pos_embed=probe_vit and cfg.sincos_pos_embed
        )
        self.is_vit = is_vit(self.backbone)
        if self.is_vit:
            if weights == "random" and cfg.official_init:
                init_vit_mocov3(self.backbone)
            if cfg.sincos_pos_embed:
                self.backbone.pos_embed.requires_grad_(False)
            if cfg.freeze_patch_embed:
                self.backbone.patch_embed.requires_grad_(False)
        elif weights == "random" and cfg.official_init:
            zero_init_residual(self.backbone)
        self.temperature = cfg.temperature if cfg.temperature is not None else (0.2 if self.is_vit else 1.0)
        proj_layers = cfg.projector_layers or (3 if self.is_vit else 2)
        width = self.backbone.num_features
        self.projector = build_mlp([width] + [cfg.mlp_dim] * (proj_layers - 1) + [cfg.dim], last_bn=True)
        # The release ends the ViT predictor with BN(affine=False) and the ResNet one without.
        self.predictor = build_mlp(
            [cfg.dim] + [cfg.mlp_dim] * (cfg.predictor_layers - 1) + [cfg.dim], last_bn=self.is_vit
        )
        self.momentum_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.current_momentum = cfg.momentum

    def _online(self) -> list[Tensor]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def _target(self) -> list[Tensor]:
        return [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]

    def training_loss(self, batch: Any) -> Tensor:
        """``batch`` = two view tensors ``[B, 3, S, S]``; returns ``loss(q1, k2) + loss(q2, k1)``."""
        x1, x2 = batch
        q1 = self.predictor(self.projector(self.backbone(x1)))
        q2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_backbone(x1))
            k2 = self.momentum_projector(self.momentum_backbone(x2))
        return mocov3_loss(q1, k2, self.temperature) + mocov3_loss(q2, k1, self.temperature)

    def forward(self, batch: Any) -> Tensor:
        # The loss is the forward pass, so a DDP-wrapped model does its bookkeeping on model(batch).
        return self.training_loss(batch)

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        """EMA update of the momentum encoder with the momentum scheduled for ``progress``.

        The release updates at the start of each iteration with that iteration's momentum;
        updating right after the optimiser step with the next iteration's progress is the same.
        """
        m = momentum_at(progress, self.cfg.momentum, self.cfg.momentum_end)
        self.current_momentum = m
        # ema = m * ema + (1 - m) * online, in place; one fused multi-tensor kernel per step
        # (what timm's ModelEmaV3 uses) instead of a launch per tensor.
        torch._foreach_lerp_(self._target(), self._online(), 1.0 - m)

"""Barlow Twins (Zbontar et al., 2021), as in the official release.

Backbone + 3-layer projector (8192-8192-8192); the loss drives the cross-correlation matrix of
the two views' embeddings, batch-normalised over the GLOBAL batch, towards the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from polypssl.distributed import gather_with_grad
from polypssl.pretrain.heads import build_mlp, zero_init_residual
from polypssl.pretrain.mocov3 import _create_backbone


@dataclass
class BarlowTwinsConfig:
    """Barlow Twins hyper-parameters (official values)."""

    projector: list[int] = field(default_factory=lambda: [8192, 8192, 8192])  # widths after the backbone
    lambd: float = 0.0051  # weight of the off-diagonal (redundancy reduction) term
    eps: float = 1e-5  # BatchNorm1d epsilon of the embedding normalisation
    official_init: bool = True  # random weights: zero-init the last BN of each residual block


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> Tensor:
    """``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2`` with ``C`` over the global batch.

    The embeddings are gathered from every process with autograd and normalised over the global
    batch here (what the release's ``BatchNorm1d(affine=False)`` under SyncBatchNorm computes):
    lightly's ``BarlowTwinsLoss`` normalises per process, which changes the loss with the number
    of processes. Every process computes the same global loss; the gather's backward sums the
    gradients over processes and DDP averages them, so parameters get exactly the gradient of
    the global loss (the release's in-place ``all_reduce`` of C is invisible to autograd, which
    leaves its gradients 1/world_size of that; ours do not depend on the world size).
    """
    z1 = gather_with_grad(z1.float())
    z2 = gather_with_grad(z2.float())
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, correction=0) + eps)
    z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, correction=0) + eps)
    c = z1.T @ z2 / n
    diag = torch.diagonal(c)
    on_diag = (diag - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag


class BarlowTwins(nn.Module):
    """Barlow Twins; ``backbone`` is the encoder to export, ``forward(batch)`` returns the loss."""

    def __init__(
        self, encoder: str, image_size: int, cfg: BarlowTwinsConfig | None = None, weights: str = "random"
    ) -> None:
        super().__init__()
        cfg = cfg or BarlowTwinsConfig()
        self.cfg = cfg
        self.backbone = _create_backbone(encoder, weights, image_size, sincos_pos_embed=False)
        if weights == "random" and cfg.official_init and not hasattr(self.backbone, "patch_embed"):
            zero_init_residual(self.backbone)
        self.projector = build_mlp([self.backbone.num_features, *cfg.projector], last_bn=False)

    def training_loss(self, batch: Any) -> Tensor:
        """``batch`` = two view tensors ``[B, 3, S, S]``."""
        x1, x2 = batch
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        return barlow_twins_loss(z1, z2, self.cfg.lambd, self.cfg.eps)

    def forward(self, batch: Any) -> Tensor:
        return self.training_loss(batch)

    def after_optimizer_step(self, progress: float) -> None:
        """Nothing to update (kept for a uniform method interface)."""

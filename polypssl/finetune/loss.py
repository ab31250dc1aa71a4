"""The study's only training loss: soft Dice per image (docs/protocol.md section 2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

SMOOTH = 1e-8


def soft_dice_loss(logits: Tensor, targets: Tensor, smooth: float = SMOOTH) -> Tensor:
    """``mean_n [1 - 2(sum p*t + s) / (sum p^2 + sum t^2 + s)]`` with ``p = sigmoid(logits)``.

    Squares in the denominator and the sum over each image (not over the batch) are what the
    study used; both change the gradients, so this is not ``smp.losses.DiceLoss`` (which pools
    the batch and uses plain sums). Computed in float32 even under autocast: the sums of a few
    hundred thousand probabilities lose too much precision in half precision.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    p = torch.sigmoid(logits.float()).flatten(1)
    t = targets.float().flatten(1)
    dice = 2 * ((p * t).sum(1) + smooth) / ((p * p).sum(1) + (t * t).sum(1) + smooth)
    return (1 - dice).mean()


class SoftDiceLoss(nn.Module):
    """Module form of :func:`soft_dice_loss`."""

    def __init__(self, smooth: float = SMOOTH) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return soft_dice_loss(logits, targets, self.smooth)

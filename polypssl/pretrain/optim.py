"""Optimisers and the learning-rate schedule of the pretraining recipes.

* LARS (MoCo v3 ResNet, Barlow Twins): lightly's implementation; 1-d parameters (biases and
  norm scales/shifts) get no weight decay and, because lightly skips the trust ratio for groups
  with zero weight decay, no layer-wise adaptation, as in both releases.
* AdamW (MoCo v3 ViT, MAE): 1-d parameters without weight decay (MAE; MoCo v3's ViT recipe
  decays everything: pass ``exclude_bias_and_norm=False``).
* Linear warm-up then half-cosine, stepped once per optimiser step.
"""

from __future__ import annotations

import math

import torch
from lightly.utils.lars import LARS
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from polypssl.errors import PolypsslError

OPTIMIZERS = ("lars", "adamw", "sgd")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    exclude_bias_and_norm: bool = True,
    bias_lr: float | None = None,
) -> list[dict]:
    """Trainable parameters split into a decayed group (>= 2-d) and a no-decay group (1-d).

    Frozen parameters (momentum encoder, frozen patch embedding, fixed position embedding) are
    left out. ``bias_lr`` gives the 1-d group its own learning rate (Barlow Twins: 0.0048 for
    biases against 0.2 for weights, per 256 images).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bias_and_norm:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups: list[dict] = [{"params": decay, "weight_decay": weight_decay}]
    extra = {} if bias_lr is None else {"lr": bias_lr}
    groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    exclude_bias_and_norm: bool = True,
    bias_lr: float | None = None,
) -> Optimizer:
    """``lars`` | ``adamw`` | ``sgd`` over ``model``'s trainable parameters (see :func:`param_groups`)."""
    groups = param_groups(model, weight_decay, exclude_bias_and_norm, bias_lr)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise PolypsslError(f"unknown optimizer {name!r}; use one of: {', '.join(OPTIMIZERS)}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, final_ratio: float = 0.0) -> float:
    """LR factor: ``step / warmup`` during warm-up, then a half cosine from 1 to ``final_ratio``."""
    if step < warmup_steps:
        return step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, final_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up from 0 then cosine to ``final_ratio * lr``; call ``step()`` once per optimiser step.

    Like the releases, the first step runs at lr 0 when there is a warm-up.
    """
    if total_steps <= 0 or warmup_steps < 0:
        raise PolypsslError(f"need total_steps > 0 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
    return LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, final_ratio))

"""Segmentation metrics exactly as the study protocol defines them (docs/protocol.md section 4).

Per image, with prediction ``P = sigmoid(logit) > 0.5`` (equivalently ``logit > 0``), target
``T = mask > 0.5`` and smoothing ``s = 1e-8``::

    Dice      = (2|P&T| + s) / (|P| + |T| + s)
    IoU       = (|P&T| + s) / (|P| + |T| - |P&T| + s)
    Precision = (|P&T| + s) / (|P| + s)
    Recall    = (|P&T| + s) / (|T| + s)

so an image with an empty prediction and an empty target scores 1 on all four. ``mDice`` etc.
are means of these per-image scores. Dataset-level (pixel-pooled) Dice sums the pixel counts
over all images first; it is a different number and is always labelled as such.

This module is a leaf: it imports only torch, so anything may use it. Counts are exact integers
and the ratios are taken in float64, so the results equal the formulas above (in float32 the
``s`` term would vanish next to counts of a million pixels).
"""

from __future__ import annotations

import torch
from torch import Tensor

SMOOTH = 1e-8
METRICS = ("dice", "iou", "precision", "recall")


def logits_at_mask_size(logits: Tensor, mask: Tensor) -> Tensor:
    """One image's logits [1,1,S,S] resized (bilinear) to ``mask``'s original [H,W], as the protocol scores."""
    return torch.nn.functional.interpolate(logits, size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)


def binarize_target(targets: Tensor) -> Tensor:
    """Bool target: bool stays as is; numbers (``{0,1}`` or luminance in ``[0,1]``) are ``> 0.5``."""
    return targets if targets.dtype == torch.bool else targets > 0.5


def _as_nhw(x: Tensor, name: str) -> Tensor:
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must be [N,1,H,W] (one channel), got shape {tuple(x.shape)}")
        return x[:, 0]
    if x.dim() == 3:
        return x
    raise ValueError(f"{name} must be [N,1,H,W] or [N,H,W], got shape {tuple(x.shape)}")


def pixel_counts(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Per-image integer counts ``inter = |P&T|``, ``pred = |P|``, ``target = |T|`` (int64, [N])."""
    pred = _as_nhw(logits, "logits") > 0  # sigmoid(x) > 0.5  <=>  x > 0
    target = binarize_target(_as_nhw(targets, "targets"))
    if pred.shape != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in size; "
            "resize the logits to the mask size first"
        )
    return {
        "inter": (pred & target).flatten(1).sum(1),
        "pred": pred.flatten(1).sum(1),
        "target": target.flatten(1).sum(1),
    }


def scores_from_counts(inter: Tensor, pred: Tensor, target: Tensor, smooth: float = SMOOTH) -> dict[str, Tensor]:
    """The four protocol scores (float64) from pixel counts; works per image or pooled."""
    i, p, t = inter.double(), pred.double(), target.double()
    return {
        "dice": (2 * i + smooth) / (p + t + smooth),
        "iou": (i + smooth) / (p + t - i + smooth),
        "precision": (i + smooth) / (p + smooth),
        "recall": (i + smooth) / (t + smooth),
    }


def per_image_scores(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Per-image ``dice``, ``iou``, ``precision``, ``recall`` (float64 tensors of shape [N]).

    ``logits`` [N,1,H,W] must already be at the target resolution (the original mask size);
    ``targets`` [N,1,H,W] are bool, ``{0,1}`` or luminance in ``[0,1]`` (thresholded at 0.5).
    """
    return scores_from_counts(**pixel_counts(logits, targets))


def pooled_dice(inter: Tensor, pred: Tensor, target: Tensor, smooth: float = SMOOTH) -> float:
    """Dataset-level (pixel-pooled) Dice from per-image counts: ``(2 sum|P&T| + s) / (sum|P| + sum|T| + s)``.

    Not the mean of per-image Dice (mDice): large masks weigh more. Report it as "pooled Dice".
    """
    return float(scores_from_counts(inter.sum(), pred.sum(), target.sum(), smooth)["dice"])


class PooledDice:
    """Accumulates pixel counts over batches for dataset-level (pixel-pooled) Dice."""

    def __init__(self) -> None:
        self.inter = 0
        self.pred = 0
        self.target = 0

    def update(self, logits: Tensor, targets: Tensor) -> None:
        counts = pixel_counts(logits, targets)
        self.inter += int(counts["inter"].sum())
        self.pred += int(counts["pred"].sum())
        self.target += int(counts["target"].sum())

    def compute(self) -> float:
        return pooled_dice(torch.tensor(self.inter), torch.tensor(self.pred), torch.tensor(self.target))

"""Pictures of predictions: overlays for ``polypssl predict`` and the W&B validation panels."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

TARGET_COLOUR = (0, 255, 0)
PREDICTION_COLOUR = (255, 0, 255)


def denormalise(image: torch.Tensor) -> np.ndarray:
    """A normalised [3,H,W] model input back to uint8 RGB [H,W,3] (ImageNet mean/std)."""
    from polypssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return rgb.permute(1, 2, 0).numpy()


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = PREDICTION_COLOUR, alpha: float = 0.45) -> np.ndarray:
    """``image`` (uint8 [H,W,3]) with ``mask`` (bool [H,W]) tinted in ``colour``."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    out = image.astype(np.float32)
    tint = np.asarray(colour, np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint
    return out.round().astype(np.uint8)


def _fit(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask.astype(bool)
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return np.asarray(resized) > 127


def overlay_panel(image: np.ndarray, target: np.ndarray | None, prediction: np.ndarray) -> np.ndarray:
    """Side by side: the image, the target on it (green) and the prediction on it (magenta)."""
    h, w = image.shape[:2]
    parts = [image]
    if target is not None:
        parts.append(overlay(image, _fit(target, h, w), TARGET_COLOUR))
    parts.append(overlay(image, _fit(prediction, h, w), PREDICTION_COLOUR))
    return np.concatenate(parts, axis=1)

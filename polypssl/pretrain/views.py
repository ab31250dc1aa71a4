"""The methods' augmentations, as in their official recipes.

MoCo v3 and Barlow Twins: BYOL-style asymmetric pair of views (blur always on the first view and
rarely on the second, solarisation only on the second). MAE: one random-resized crop and a flip.
All randomness comes from the torch RNG (torchvision draws from it, and so does our blur), so
``SeededDataset`` makes every view a pure function of (seed, epoch, index).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision import transforms as T

from polypssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from polypssl.errors import PolypsslError

METHODS = ("mocov3", "barlowtwins", "mae")


class PILGaussianBlur:
    """Gaussian blur with sigma ~ U(sigma_min, sigma_max), on PIL images.

    PIL's box-filter approximation is what the MoCo v3 and Barlow Twins loaders use, and it is
    several times faster than torchvision's tensor blur at 224 px (docs/protocol.md section 8). The
    sigma is drawn from the torch RNG, unlike the releases' python ``random``.
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        sigma = float(torch.empty(()).uniform_(self.sigma[0], self.sigma[1]))
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class _RGB:
    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "RGB()"


def byol_view(
    image_size: int,
    crop_min: float,
    blur_p: float,
    solarize_p: float,
    interpolation: T.InterpolationMode = T.InterpolationMode.BILINEAR,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> T.Compose:
    """One branch of the BYOL-style pipeline (crop, jitter .4/.4/.2/.1 p .8, grey .2, blur, solarise, flip)."""
    return T.Compose(
        [
            _RGB(),
            T.RandomResizedCrop(image_size, scale=(crop_min, 1.0), interpolation=interpolation),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([PILGaussianBlur((0.1, 2.0))], p=blur_p),
            T.RandomSolarize(threshold=128, p=solarize_p),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


class TwoViews:
    """Applies two (different) pipelines to one image and returns ``[view1, view2]``."""

    def __init__(self, first: Callable[[Image.Image], Tensor], second: Callable[[Image.Image], Tensor]) -> None:
        self.first = first
        self.second = second

    def __call__(self, img: Image.Image) -> list[Tensor]:
        return [self.first(img), self.second(img)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n first={self.first},\n second={self.second})"


def build_views(
    method: str,
    image_size: int,
    *,
    encoder: str | None = None,
    crop_min: float | None = None,
    interpolation: str | None = None,
    blur_p: tuple[float, float] = (1.0, 0.1),
    solarize_p: tuple[float, float] = (0.0, 0.2),
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Callable[[Image.Image], list[Tensor] | Tensor]:
    """The training transform of ``method`` for PIL images.

    MoCo v3 / Barlow Twins return ``[view1, view2]`` (each ``[3, S, S]``); MAE returns one
    tensor. Defaults follow the releases: minimum crop scale 0.08 for ViT and 0.2 for ResNet in
    MoCo v3 (``encoder`` decides; ResNet when not given), 0.08 with bicubic resizing in Barlow
    Twins, 0.2 with bicubic in MAE; ``crop_min`` and ``interpolation`` override them.
    """
    if method not in METHODS:
        raise PolypsslError(f"unknown pretraining method {method!r}; use one of: {', '.join(METHODS)}")
    vit = bool(encoder) and encoder.startswith("vit")
    defaults = {
        "mocov3": (0.08 if vit else 0.2, "bilinear"),
        "barlowtwins": (0.08, "bicubic"),
        "mae": (0.2, "bicubic"),
    }[method]
    crop_min = defaults[0] if crop_min is None else crop_min
    try:
        mode = T.InterpolationMode(interpolation or defaults[1])
    except ValueError:
        raise PolypsslError(
            f"unknown interpolation {interpolation!r}; use one of: bilinear, bicubic, nearest"
        ) from None
    if method == "mae":
        return T.Compose(
            [
                _RGB(),
                T.RandomResizedCrop(image_size, scale=(crop_min, 1.0), interpolation=mode),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )
    return TwoViews(
        byol_view(image_size, crop_min, blur_p[0], solarize_p[0], mode, mean, std),
        byol_view(image_size, crop_min, blur_p[1], solarize_p[1], mode, mean, std),
    )

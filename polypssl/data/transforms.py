"""Fine-tuning and evaluation transforms (docs/protocol.md sections 2 and 4).

Images stay uint8 through the resize, colour and blur steps; normalisation comes right before
the affine warp so the warp can fill with exactly -1 (the protocol's fill "after
normalisation"). Geometric steps see the image and its ``tv_tensors.Mask`` together, so they
share every random parameter; torchvision warps masks with nearest interpolation, which keeps
them binary. All randomness comes from the global torch RNG, which
:class:`polypssl.data.sampling.SeededDataset` seeds per sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W] (no copy through float)."""
    arr = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def resize_image(image: Image.Image, size: int) -> Image.Image:
    """docs/protocol.md section 2: the image is resized (PIL, bilinear) to size x size."""
    return image.resize((size, size), Image.BILINEAR)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] -> float32 normalised with the ImageNet mean/std."""
    return v2.functional.normalize(image.float().div_(255.0), IMAGENET_MEAN, IMAGENET_STD)


class SeparableGaussianBlur(torch.nn.Module):
    """``v2.GaussianBlur`` for uint8 images, as two 1-D passes.

    Hand-written because torchvision convolves with the full 25x25 kernel (625 multiplies per
    pixel, most of the augmentation time); a Gaussian kernel is the outer product of two 1-D
    kernels, so two passes give the same result (up to float rounding) about 10x faster. Sigma is
    drawn from the global torch RNG exactly as ``v2.GaussianBlur`` draws it.
    """

    def __init__(self, kernel_size: int, sigma: tuple[float, float]) -> None:
        super().__init__()
        self.kernel_size, self.sigma = kernel_size, sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        sigma = torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item()
        half = self.kernel_size // 2
        x = torch.linspace(-half, half, self.kernel_size)
        kernel = torch.softmax(-0.5 * (x / sigma) ** 2, dim=0)  # normalised exp(-x^2 / 2 sigma^2)
        c = image.shape[-3]
        out = torch.nn.functional.pad(image.float()[None], [half, half, half, half], mode="reflect")
        out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return out[0].round_().clamp_(0, 255).to(image.dtype)


class SegmentationTrainTransform:
    """``(PIL image, bool mask) -> (float32 [3,S,S] normalised, float32 [1,S,S] in {0,1})``.

    ``color`` and ``blur`` exist so tests can check the geometry pixel by pixel; training keeps
    both on (docs/protocol.md section 2).
    """

    def __init__(self, image_size: int, *, color: bool = True, blur: bool = True) -> None:
        self.image_size = image_size
        photometric: list[Any] = []
        if color:
            photometric.append(v2.ColorJitter(brightness=0.4, contrast=0.5, saturation=0.25, hue=0.01))
        if blur:
            photometric.append(SeparableGaussianBlur(kernel_size=25, sigma=(0.001, 2.0)))
        self.photometric = v2.Compose(photometric) if photometric else None
        self.flips = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])
        # torchvision's default nearest interpolation for the image too, as in the reference recipe.
        self.affine = v2.RandomAffine(
            degrees=180, translate=(0.125, 0.125), scale=(0.5, 1.5), shear=22.5,
            fill={tv_tensors.Image: -1.0, tv_tensors.Mask: 0},
        )

    def __call__(self, sample: tuple[Image.Image, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = sample
        s = self.image_size
        img = pil_to_uint8(resize_image(image, s))
        m = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize((s, s), Image.NEAREST)
        msk = torch.from_numpy(np.asarray(m) > 127).to(torch.uint8)[None]
        if self.photometric is not None:
            img = self.photometric(img)
        img, msk = self.flips(tv_tensors.Image(img), tv_tensors.Mask(msk))
        img, msk = self.affine(tv_tensors.Image(normalise(img.as_subclass(torch.Tensor))), msk)
        return img.as_subclass(torch.Tensor).contiguous(), msk.as_subclass(torch.Tensor).float()


class SegmentationEvalTransform:
    """``(PIL image, bool mask) -> (float32 [3,S,S] normalised, bool [H,W] at the original size)``."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, sample: tuple[Image.Image, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = sample
        img = normalise(pil_to_uint8(resize_image(image, self.image_size)))
        return img, torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))


class EvalDataset(Dataset):
    """Evaluation items ``{"image", "mask" (original size), "name", "index"}`` from a labelled source."""

    def __init__(self, source: Any, image_size: int) -> None:
        self.source = source
        self.transform = SegmentationEvalTransform(image_size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.transform(self.source[index])
        return {"image": image, "mask": mask, "name": self.source.names[index], "index": index}


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the images; keep masks (their sizes differ), names and indices as lists."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": [b["mask"] for b in batch],
        "name": [b["name"] for b in batch],
        "index": [b["index"] for b in batch],
    }

"""docs/protocol.md section 2 augmentations: image and mask move together; eval keeps the original mask."""

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from polypssl.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalDataset,
    SeededDataset,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    collate_eval,
)
from polypssl.data.transforms import SeparableGaussianBlur

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def pattern(size=64, seed=0):
    """Random blocky image whose red channel is 255 exactly where the mask is set."""
    rng = np.random.default_rng(seed)
    blocks = rng.random((size // 8, size // 8)) < 0.4
    mask = np.kron(blocks, np.ones((8, 8), bool))
    img = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
    img[..., 0] = np.where(mask, 255, 0)
    return Image.fromarray(img), mask


def test_geometry_moves_image_and_mask_together_pixel_exactly():
    image, mask = pattern()
    transform = SegmentationTrainTransform(64, color=False, blur=False)
    changed = 0
    for seed in range(20):
        torch.manual_seed(seed)
        x, m = transform((image, mask))
        red = (x[0] * STD[0] + MEAN[0]) * 255  # undo normalisation; the fill is -1 -> red 65
        assert torch.equal(red > 128, m[0] > 0.5), seed
        changed += not torch.equal(m[0] > 0.5, torch.from_numpy(mask))
    assert changed >= 18  # the augmentation really moves things


def test_train_output_types_fill_and_binary_mask():
    image, mask = pattern(96)
    torch.manual_seed(0)
    for _ in range(5):
        x, m = SegmentationTrainTransform(32)((image, mask))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert m.shape == (1, 32, 32) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
    torch.manual_seed(3)
    x, m = SegmentationTrainTransform(64, color=False, blur=False)((Image.new("RGB", (64, 64), (255, 255, 255)), np.ones((64, 64), bool)))
    outside = m[0] == 0  # where the affine filled
    assert outside.any() and torch.allclose(x[:, outside], torch.tensor(-1.0))


def test_randomness_comes_from_torch_only():
    image, mask = pattern()
    ds = SeededDataset([(image, mask)] * 4, SegmentationTrainTransform(32), seed=7)
    a, b = ds[(3, 1)], ds[(3, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(ds[(3, 2)][0], a[0])


def test_separable_blur_equals_torchvision():
    x = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    for sigma in (0.001, 0.7, 2.0):
        torch.manual_seed(0)
        ours = SeparableGaussianBlur(25, (sigma, sigma))(x)
        theirs = v2.GaussianBlur(25, (sigma, sigma))(x)
        assert (ours.int() - theirs.int()).abs().max() <= 1


class _Source:
    def __init__(self, pairs):
        self.pairs = pairs
        self.names = [f"{i}.png" for i in range(len(pairs))]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]


def test_eval_keeps_original_mask_and_collates_lists():
    pairs = [pattern(64, 0), (Image.new("RGB", (50, 30)), np.zeros((30, 50), bool))]
    x, m = SegmentationEvalTransform(32)(pairs[1])
    assert x.shape == (3, 32, 32) and m.shape == (30, 50) and m.dtype == torch.bool
    assert torch.allclose(x, ((0 - MEAN) / STD).expand(3, 32, 32))
    batch = next(iter(DataLoader(EvalDataset(_Source(pairs), 32), batch_size=2, collate_fn=collate_eval)))
    assert batch["image"].shape == (2, 3, 32, 32)
    assert [tuple(m.shape) for m in batch["mask"]] == [(64, 64), (30, 50)]
    assert batch["name"] == ["0.png", "1.png"] and batch["index"] == [0, 1]

"""Deterministic sampling and augmentation randomness.

Training results should not depend on the number of DataLoader workers, the number of
processes, or where a run was interrupted and resumed. Two pieces make that true:

* :class:`EpochSampler` yields ``(epoch, index)`` pairs in an order that is a pure function of
  ``(seed, epoch)``;
* :class:`SeededDataset` runs the wrapped transform under a torch RNG seeded from
  ``(seed, epoch, index)``, inside ``fork_rng`` so the caller's random state is untouched.

torchvision's transforms draw from the global torch RNG, and PyTorch seeds each worker from the
main process RNG when an iterator is created; both change on resume or with another worker
count, hence this small hand-written layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (splitmix64 finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``; the order depends only on ``seed`` and the epoch set last."""

    def __init__(self, num_samples: int, seed: int = 42, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            order = list(range(self.num_samples))
        for index in order:
            yield self.epoch, index


class SeededDataset(Dataset):
    """Wraps ``base`` so that ``transform(base[index])`` is reproducible per (seed, epoch, index).

    Accepts a plain integer index too (epoch 0), so the wrapped dataset also works with an
    ordinary sampler.
    """

    def __init__(self, base: Sequence[Any], transform: Callable[[Any], Any] | None, seed: int = 42) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        item = self.base[index]
        if self.transform is None:
            return item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(item)

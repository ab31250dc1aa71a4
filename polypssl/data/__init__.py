"""Datasets for polypssl: sources over the real layouts, the protocol split, transforms, synth.

Names are imported lazily (PEP 562) so that ``polypssl data --help`` and the dataset tools do
not pay for importing torch and torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DATASET_NAMES": "sources",
    "LabelledSource": "sources",
    "UnlabelledSource": "sources",
    "open_labelled": "sources",
    "open_unlabelled": "sources",
    "protocol_split": "split",
    "load_mask": "decode",
    "load_rgb": "decode",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "SegmentationTrainTransform": "transforms",
    "SegmentationEvalTransform": "transforms",
    "EvalDataset": "transforms",
    "collate_eval": "transforms",
    "synthesize": "synth",
    "ensure_synthetic": "synth",
    "check_dataset": "check",
    "download": "downloads",
    "EpochSampler": "sampling",
    "SeededDataset": "sampling",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"polypssl.data.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'polypssl.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

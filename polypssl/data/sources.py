"""One interface over the datasets as users unpack them (docs/protocol.md section 5).

``open_labelled`` returns image/mask pairs (Kvasir-SEG, CVC-ClinicDB, Hub datasets) and
``open_unlabelled`` returns images only (Hyperkvasir-unlabelled, ImageNet-1k, any folder, and
the images of the labelled sets). Paths are resolved once, sorted, and kept as plain lists so a
source pickles cheaply into DataLoader workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from polypssl.data.decode import IMAGE_EXTENSIONS, is_image_file, load_mask, load_rgb
from polypssl.data.split import SPLITS, protocol_split
from polypssl.errors import PolypsslError

log = logging.getLogger(__name__)

LABELLED = ("kvasir-seg", "cvc-clinicdb", "hf")
UNLABELLED = ("hyperkvasir-unlabelled", "imagenet-1k", "folder", "kvasir-seg", "cvc-clinicdb", "hf")
DATASET_NAMES = ("kvasir-seg", "cvc-clinicdb", "hyperkvasir-unlabelled", "imagenet-1k", "folder", "hf")

#: Folder names under which each dataset may sit inside the folder the user points at (lower case).
ALIASES: dict[str, tuple[str, ...]] = {
    "kvasir-seg": ("kvasir-seg",),
    "cvc-clinicdb": ("cvc-clinicdb", "cvc-612", "cvc_clinicdb", "tif", "png"),
    "hyperkvasir-unlabelled": (
        "hyperkvasir-unlabelled", "unlabeled-images", "unlabelled-images",
        "hyper-kvasir-unlabeled-images", "hyperkvasir-unlabeled",
    ),
}
#: (image folder, mask folder) names of each labelled layout (matched case-insensitively).
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "kvasir-seg": (("images",), ("masks",)),
    "cvc-clinicdb": (("original",), ("ground truth", "groundtruth", "ground_truth")),
}
#: Image counts of the real datasets (a mismatch is only worth a note).
EXPECTED_COUNTS = {"kvasir-seg": 1000, "cvc-clinicdb": 612}


def check_name(name: str, allowed: Sequence[str] = DATASET_NAMES) -> str:
    if name not in allowed:
        raise PolypsslError(f"unknown dataset name {name!r}; valid names: {', '.join(allowed)}")
    return name


def _existing_dir(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise PolypsslError(f"dataset folder {root} does not exist; check the path (or run `polypssl data download`)")
    if not root.is_dir():
        raise PolypsslError(f"{root} is a file, not a dataset folder")
    return root


def _child(folder: Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of ``folder`` whose lower-cased name is in ``names`` (first in sorted order)."""
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return None
    for child in children:
        if child.name.lower() in names:
            return child
    return None


def _candidates(root: Path, name: str) -> list[Path]:
    """``root`` itself, then aliased sub-folders up to two levels down (``ROOT/CVC-ClinicDB/PNG``)."""
    out, frontier = [root], [root]
    for _ in range(2):
        nxt = []
        for folder in frontier:
            child = _child(folder, ALIASES.get(name, ()))
            if child is not None:
                nxt.append(child)
        out.extend(nxt)
        frontier = nxt
    return out


def resolve_labelled_dirs(name: str, root: str | Path) -> tuple[Path, Path]:
    """(image folder, mask folder) of a Kvasir-SEG or CVC-ClinicDB copy at ``root`` or below it."""
    root = _existing_dir(root)
    image_names, mask_names = LAYOUTS[name]
    for folder in _candidates(root, name):
        images, masks = _child(folder, image_names), _child(folder, mask_names)
        if images is not None and masks is not None:
            return images, masks
    want = f"{image_names[0]}/ and {mask_names[0]}/" if name == "kvasir-seg" else "Original/ and 'Ground Truth'/"
    raise PolypsslError(
        f"{root} does not look like {name}: expected {want} in it or in a sub-folder named "
        f"{' or '.join(ALIASES[name])}; see docs/datasets.md for the layout"
    )


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` sorted by path (hidden files such as ``._x.jpg`` skipped)."""
    if not recursive:
        files = [p for p in folder.iterdir() if p.is_file() and is_image_file(p)]
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files.extend(Path(dirpath, f) for f in filenames if is_image_file(Path(f)))
    return sorted(files, key=str)


def _no_images(folder: Path) -> PolypsslError:
    return PolypsslError(
        f"no images found in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}); "
        "is the folder empty or the download incomplete?"
    )


def pair_files(images: list[Path], masks: list[Path]) -> list[str]:
    """Problems with position pairing: files without a partner, or stems that differ in place."""
    problems = []
    img_stems, mask_stems = {p.stem: p for p in images}, {p.stem: p for p in masks}
    for stem in sorted(set(img_stems) - set(mask_stems)):
        problems.append(f"image without mask: {img_stems[stem]} (no mask named {stem}.* in {masks[0].parent if masks else 'the mask folder'})")
    for stem in sorted(set(mask_stems) - set(img_stems)):
        problems.append(f"mask without image: {mask_stems[stem]} (no image named {stem}.* in {images[0].parent if images else 'the image folder'})")
    if not problems:
        for img, mask in zip(images, masks):
            if img.stem != mask.stem:
                problems.append(f"sorted image and mask lists disagree at {img.name} / {mask.name}: rename them to sort alike")
                break
    return problems


def _split_indices(n: int, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise PolypsslError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return np.arange(n) if split == "all" else protocol_split(n)[split]


class LabelledSource:
    """Image/mask pairs; ``source[i]`` -> (RGB PIL image, bool mask HxW at the original size)."""

    names: list[str]
    image_paths: list[Path] | None

    def __len__(self) -> int:
        return len(self.names)

    def load_image(self, i: int) -> Image.Image:
        raise NotImplementedError

    def load_mask(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self, i: int) -> tuple[str, str]:
        """How to name the image and mask of item ``i`` in an error message."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[Image.Image, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        image, mask = self.load_image(i), self.load_mask(i)
        if mask.shape != (image.height, image.width):
            img_name, mask_name = self.describe(i)
            raise PolypsslError(
                f"mask {mask_name} is {mask.shape[1]}x{mask.shape[0]} but its image {img_name} is "
                f"{image.width}x{image.height}; masks must have their image's size"
            )
        return image, mask


class FolderPairs(LabelledSource):
    """Pairs from an image folder and a mask folder (Kvasir-SEG, CVC-ClinicDB layouts)."""

    def __init__(self, image_paths: list[Path], mask_paths: list[Path]) -> None:
        self.image_paths = list(image_paths)
        self.mask_paths = list(mask_paths)
        self.names = [p.name for p in self.image_paths]

    def load_image(self, i: int) -> Image.Image:
        return load_rgb(self.image_paths[i])

    def load_mask(self, i: int) -> np.ndarray:
        return load_mask(self.mask_paths[i])

    def describe(self, i: int) -> tuple[str, str]:
        return str(self.image_paths[i]), str(self.mask_paths[i])


def labelled_files(name: str, root: str | Path) -> tuple[list[Path], list[Path]]:
    """Sorted image and mask files of a labelled folder dataset, checked to pair one to one."""
    images_dir, masks_dir = resolve_labelled_dirs(name, root)
    images, masks = list_images(images_dir), list_images(masks_dir)
    if not images:
        raise _no_images(images_dir)
    if not masks:
        raise _no_images(masks_dir)
    problems = pair_files(images, masks)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise PolypsslError(f"{name} at {root}: {shown} (run `polypssl data check {name} {root}` for all)")
    return images, masks


def open_labelled(
    name: str,
    root: str | Path,
    *,
    split: str = "all",
    image_column: str = "image",
    mask_column: str = "annotation",
) -> LabelledSource:
    """Open a labelled dataset; ``split`` in train/val/test picks docs/protocol.md section 3's indices."""
    check_name(name)
    if name not in LABELLED:
        raise PolypsslError(f"dataset {name!r} has no masks; labelled datasets: {', '.join(LABELLED)}")
    if split not in SPLITS:
        raise PolypsslError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if name == "hf":
        from polypssl.data.hf import HFPairs

        full = HFPairs.open(str(root), image_column, mask_column)
        return full.subset(_split_indices(len(full), split))
    images, masks = labelled_files(name, root)
    idx = _split_indices(len(images), split)
    return FolderPairs([images[i] for i in idx], [masks[i] for i in idx])


class UnlabelledSource:
    """Images only; ``source[i]`` -> RGB PIL image (JPEGs decoded at reduced scale if asked)."""

    paths: list[Path] | None

    def __init__(self, paths: list[Path], decode_max_side: int | None = None) -> None:
        self.paths = list(paths)
        self.decode_max_side = decode_max_side

    def __len__(self) -> int:
        return len(self.paths or [])

    def __getitem__(self, i: int) -> Image.Image:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return load_rgb(self.paths[i], self.decode_max_side)

    def head(self, n: int) -> UnlabelledSource:
        """The first ``n`` images (in sorted order)."""
        return UnlabelledSource((self.paths or [])[:n], self.decode_max_side)


def _imagenet_train_dir(root: Path) -> Path:
    train = _child(root, ("train",))
    if train is not None:
        return train
    if any(p.is_dir() and p.name.startswith("n") and p.name[1:].isdigit() for p in root.iterdir()):
        return root
    raise PolypsslError(
        f"{root} does not look like ImageNet-1k: expected train/<wnid>/*.JPEG in it (or point at train/ itself)"
    )


def unlabelled_files(name: str, root: str | Path) -> list[Path]:
    """Sorted image files an unlabelled source reads."""
    if name in LAYOUTS:
        return labelled_files(name, root)[0]
    folder = _existing_dir(root)
    if name == "imagenet-1k":
        train = _imagenet_train_dir(folder)
        files = sorted(
            (p for d in train.iterdir() if d.is_dir() for p in d.iterdir() if is_image_file(p)), key=str
        )
    else:
        if name == "hyperkvasir-unlabelled":
            folder = _candidates(folder, name)[-1]
        files = list_images(folder, recursive=True)
    if not files:
        raise _no_images(folder)
    return files


def open_unlabelled(
    name: str,
    root: str | Path,
    *,
    image_column: str = "image",
    max_images: int | None = None,
    decode_max_side: int | None = None,
) -> UnlabelledSource:
    """Open images for pretraining; ``max_images`` keeps the first N in sorted order.

    ``decode_max_side`` is the side length the consumer needs: JPEGs are decoded at the smallest
    1/2, 1/4, 1/8 scale that still keeps both sides at least that long.
    """
    check_name(name)
    if name == "hf":
        from polypssl.data.hf import HFImages

        source: UnlabelledSource = HFImages.open(str(root), image_column, decode_max_side)
    else:
        source = UnlabelledSource(unlabelled_files(name, root), decode_max_side)
    if max_images is not None:
        if max_images < 1:
            raise PolypsslError(f"max_images must be at least 1, got {max_images}")
        source = source.head(max_images)
    return source

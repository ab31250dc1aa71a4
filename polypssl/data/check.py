"""``check_dataset``: every problem of a dataset copy at once, with file names.

Decoding runs in a thread pool (Pillow releases the GIL while decoding), JPEG images at 1/8
scale: the decoder still reads the whole entropy-coded stream, so truncation is still caught.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from polypssl.data.decode import apply_draft, load_mask_luminance, open_pil
from polypssl.data.sources import (
    EXPECTED_COUNTS,
    LAYOUTS,
    check_name,
    list_images,
    pair_files,
    resolve_labelled_dirs,
    unlabelled_files,
)
from polypssl.errors import PolypsslError

#: Mask pixels farther than this from both 0 and 1 (in [0, 1] luminance) are not JPEG edge noise...
FAR_FROM_BINARY = 0.25
#: ...and a mask with more than this fraction of them is not a binary mask.
MAX_FAR_FRACTION = 0.05


class CheckReport(list):
    """The problems (a list of str), plus ``counts`` and ``notes`` that are not failures."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.notes: list[str] = []


def _image_problem(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    try:
        img = open_pil(path)
        size = img.size
        apply_draft(img, 64)
        img.load()
        return None, size
    except PolypsslError as err:
        return str(err), None
    except (OSError, ValueError, SyntaxError) as err:
        return f"cannot decode image {path} (truncated or corrupt): {err}", None


def mask_problem(luminance: np.ndarray, label: str) -> str | None:
    """A message when the mask is not binary beyond JPEG noise (or is not 2-D)."""
    far = np.minimum(luminance, 1.0 - luminance) > FAR_FROM_BINARY
    fraction = float(far.mean()) if far.size else 0.0
    if fraction > MAX_FAR_FRACTION:
        return (
            f"mask {label} is not binary: {fraction:.1%} of its pixels are far from black and white "
            f"(more than {MAX_FAR_FRACTION:.0%}); is it a mask at all?"
        )
    return None


def _pair_problems(image: Path, mask: Path) -> list[str]:
    problems = []
    err, size = _image_problem(image)
    if err:
        problems.append(err)
    try:
        lum = load_mask_luminance(mask)
    except PolypsslError as e:
        return [*problems, str(e)]
    if size is not None and lum.shape != (size[1], size[0]):
        problems.append(
            f"mask {mask} is {lum.shape[1]}x{lum.shape[0]} but its image {image} is {size[0]}x{size[1]}"
        )
    bad = mask_problem(lum, str(mask))
    if bad:
        problems.append(bad)
    return problems


def _is_synthetic(root: Path) -> bool:
    from polypssl.data.synth import is_synthetic

    return is_synthetic(root)


def check_dataset(
    name: str,
    root: str | Path,
    *,
    image_column: str = "image",
    mask_column: str = "annotation",
    workers: int | None = None,
    progress: bool = False,
) -> list[str]:
    """All problems of dataset ``name`` at ``root`` (empty list: fine).

    The returned list is a :class:`CheckReport` whose ``counts`` and ``notes`` (for example a
    count that differs from the real dataset's) are informational only.
    """
    from tqdm.auto import tqdm

    check_name(name)
    report = CheckReport()
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    try:
        if name == "hf":
            return _check_hf(str(root), report, image_column, mask_column)
        if name in LAYOUTS:
            images_dir, masks_dir = resolve_labelled_dirs(name, root)
            images, masks = list_images(images_dir), list_images(masks_dir)
            if not images:
                report.append(f"no images in {images_dir}")
            if not masks:
                report.append(f"no masks in {masks_dir}")
            report.extend(pair_files(images, masks))
            mask_by_stem = {m.stem: m for m in masks}
            pairs = [(i, mask_by_stem[i.stem]) for i in images if i.stem in mask_by_stem]
            report.counts = {"images": len(images), "masks": len(masks), "pairs": len(pairs)}
            expected = EXPECTED_COUNTS[name]
            if images and len(images) != expected and not _is_synthetic(images_dir):
                report.notes.append(f"{len(images)} images; the published {name} has {expected}")
            with ThreadPoolExecutor(workers) as pool:
                results = pool.map(lambda p: _pair_problems(*p), pairs)
                for found in tqdm(results, total=len(pairs), desc=f"check {name}", disable=not progress):
                    report.extend(found)
        else:
            files = unlabelled_files(name, root)
            report.counts = {"images": len(files)}
            with ThreadPoolExecutor(workers) as pool:
                results = pool.map(_image_problem, files)
                for err, _ in tqdm(results, total=len(files), desc=f"check {name}", disable=not progress):
                    if err:
                        report.append(err)
    except PolypsslError as err:
        report.append(str(err))
    return report


def _check_hf(root: str, report: CheckReport, image_column: str, mask_column: str) -> CheckReport:
    from polypssl.data.hf import HFPairs

    source = HFPairs.open(root, image_column, mask_column)
    report.counts = {"pairs": len(source)}
    for i in range(len(source)):
        img_label, mask_label = source.describe(i)
        try:
            image, lum = source.load_image(i), source.masks.luminance(source.rows[i])
        except PolypsslError as err:
            report.append(str(err))
            continue
        if lum.shape != (image.height, image.width):
            report.append(
                f"mask {mask_label} is {lum.shape[1]}x{lum.shape[0]} but its image {img_label} is {image.width}x{image.height}"
            )
        bad = mask_problem(lum, mask_label)
        if bad:
            report.append(bad)
    return report

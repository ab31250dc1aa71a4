"""``polypssl predict RUN_DIR IMAGES... --out DIR``: masks and overlays from a fine-tuned run.

Each image is resized to the run's training size as in evaluation, and the logits are resized
back (bilinear) to the image's own size before thresholding, so ``masks/<name>.png`` has the
original image's size (0 background, 255 polyp) and ``overlays/<name>.png`` shows it on the image.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from polypssl.errors import PolypsslError
from polypssl.runs import atomic_path

log = logging.getLogger(__name__)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the folders named."""
    from polypssl.data.decode import is_image_file
    from polypssl.data.sources import list_images

    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = list_images(path, recursive=True)
            if not files:
                raise PolypsslError(f"no images found in folder {path}")
            found.extend(files)
        elif path.is_file():
            if not is_image_file(path):
                raise PolypsslError(f"{path} is not an image file this tool reads (jpg, png, tif, ...)")
            found.append(path)
        else:
            raise PolypsslError(f"{path} does not exist; pass image files or folders of images")
    return found


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names: the file stem, made unique with a counter when two inputs share it."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}-{count}")
    return names


@torch.no_grad()
def predict_masks(model: nn.Module, images: Sequence[Image.Image], image_size: int, device: torch.device | str = "cpu") -> list[np.ndarray]:
    """Bool masks at each image's own size: logits resized bilinearly, then ``sigmoid > 0.5``."""
    from polypssl.data.transforms import normalise, pil_to_uint8, resize_image

    batch = torch.stack([normalise(pil_to_uint8(resize_image(img, image_size))) for img in images]).to(device)
    logits = model(batch).float()
    out = []
    for i, img in enumerate(images):
        full = F.interpolate(logits[i : i + 1], size=(img.height, img.width), mode="bilinear", align_corners=False)
        out.append((full[0, 0] > 0).cpu().numpy())
    return out


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def predict(run_dir: str | Path, inputs: Sequence[str | Path], out: str | Path, batch_size: int = 8, device: str | None = None) -> list[Path]:
    """Write ``OUT/masks/<name>.png`` and ``OUT/overlays/<name>.png`` for every input image."""
    from tqdm.auto import tqdm

    from polypssl.data.decode import load_rgb
    from polypssl.finetune.loop import load_segmenter
    from polypssl.finetune.visual import overlay

    paths = collect_images(inputs)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, info = load_segmenter(run_dir)
    model.to(dev)
    image_size = int(info["image_size"])
    out = Path(out)
    written = []
    names = _unique_stems(paths)
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", unit="batch"):
        chunk = paths[start : start + batch_size]
        images = [load_rgb(p) for p in chunk]
        for name, img, mask in zip(names[start : start + batch_size], images, predict_masks(model, images, image_size, dev)):
            mask_path = out / "masks" / f"{name}.png"
            _save_png(mask.astype(np.uint8) * 255, mask_path)
            _save_png(overlay(np.asarray(img), mask), out / "overlays" / f"{name}.png")
            written.append(mask_path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a complete fine-tuning run (holds run.json and model.safetensors)")
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders of images")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: masks/ and overlays/ go here")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    written = predict(args.run_dir, args.images, args.out, batch_size=args.batch_size, device=args.device)
    print(f"wrote {len(written)} masks to {Path(args.out) / 'masks'} and overlays to {Path(args.out) / 'overlays'}")
    return 0

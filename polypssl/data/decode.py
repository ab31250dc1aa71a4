"""Image and mask decoding: one place that turns a file (or bytes) into RGB pixels or a bool mask.

Masks follow docs/protocol.md section 4: one channel (luminance) scaled to [0, 1], then ``> 0.5``. JPEG
masks (Kvasir-SEG) hold values such as 1-7 and 248-254 near edges; the threshold absorbs them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from polypssl.errors import PolypsslError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

Source = str | Path | bytes


def _describe(src: Source, label: str | None) -> str:
    return label or (str(src) if not isinstance(src, bytes) else "<image bytes>")


def open_pil(src: Source, label: str | None = None) -> Image.Image:
    """Open (lazily) an image file or encoded bytes; a missing or unreadable file is a PolypsslError."""
    try:
        return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
    except FileNotFoundError as err:
        raise PolypsslError(f"image file not found: {_describe(src, label)}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise PolypsslError(
            f"cannot read image {_describe(src, label)}: {err}; replace or delete the file"
        ) from err


def apply_draft(img: Image.Image, max_side: int | None) -> Image.Image:
    """Ask the JPEG decoder for a 1/2, 1/4 or 1/8 scale that keeps both sides >= ``max_side``.

    libjpeg skips the discarded DCT coefficients, so a 1920x1072 frame needed at 224 px decodes
    at 480x268 several times faster; images that are not JPEG are left untouched.
    """
    if max_side and img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))
    return img


def load_rgb(src: Source, max_side: int | None = None, label: str | None = None) -> Image.Image:
    """Decode to an RGB PIL image (optionally at reduced JPEG scale, see :func:`apply_draft`)."""
    img = apply_draft(open_pil(src, label), max_side)
    try:
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img
    except (OSError, ValueError, SyntaxError) as err:
        raise PolypsslError(
            f"cannot decode image {_describe(src, label)} (truncated or corrupt): {err}; "
            "replace the file or run `polypssl data check` to list every bad file"
        ) from err


def mask_luminance(img: Image.Image) -> np.ndarray:
    """Mask pixels as float luminance in [0, 1] (RGB via ITU-R 601 luma, as PIL's ``L`` mode)."""
    if img.mode == "1":
        return np.asarray(img, dtype=np.float32)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        return arr if arr.max(initial=0) <= 1.0 else arr / 255.0
    if img.mode == "LA":
        img = img.convert("L")
    elif img.mode != "L":
        img = (img if img.mode == "RGB" else img.convert("RGB")).convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def binarise(luminance: np.ndarray) -> np.ndarray:
    """docs/protocol.md section 4: target = luminance in [0, 1] > 0.5."""
    return luminance > 0.5


def load_mask_luminance(src: Source, label: str | None = None) -> np.ndarray:
    img = open_pil(src, label)
    try:
        img.load()
        return mask_luminance(img)
    except (OSError, ValueError, SyntaxError) as err:
        raise PolypsslError(
            f"cannot decode mask {_describe(src, label)} (truncated or corrupt): {err}; replace the file"
        ) from err


def load_mask(src: Source, label: str | None = None) -> np.ndarray:
    """Decode a mask file to a bool array HxW at its original size."""
    return binarise(load_mask_luminance(src, label))


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")

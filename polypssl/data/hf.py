"""HuggingFace ``datasets`` sources: a Hub id, a ``save_to_disk`` folder, or parquet files.

Images and masks are read as encoded bytes (``Image(decode=False)``) and decoded by
:mod:`polypssl.data.decode`, so Hub copies get the same mask binarisation and reduced-size JPEG
decoding as folders. Rows are ordered by their stored file path when every row has one, which
reproduces docs/protocol.md section 3's sorted order (and so its split) for Hub copies of Kvasir-SEG.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from polypssl.data.decode import binarise, load_mask_luminance, load_rgb, mask_luminance
from polypssl.data.sources import LabelledSource, UnlabelledSource
from polypssl.errors import PolypsslError

log = logging.getLogger(__name__)


def load_hf_dataset(root: str) -> Any:
    """One ``datasets.Dataset`` from a Hub id, a ``save_to_disk`` folder or parquet file(s).

    A dataset with several splits is concatenated in its stored split order (the protocol
    splits all labelled images itself).
    """
    import datasets

    path = Path(root).expanduser()
    try:
        if path.is_file():
            if path.suffix != ".parquet":
                raise PolypsslError(f"{path}: expected a .parquet file or a dataset folder")
            ds = datasets.load_dataset("parquet", data_files=[str(path)], split="train")
        elif path.is_dir():
            if any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
                ds = datasets.load_from_disk(str(path))
            else:
                files = sorted(str(p) for p in path.rglob("*.parquet"))
                if not files:
                    raise PolypsslError(
                        f"{path} holds neither a save_to_disk dataset nor .parquet files; "
                        "give a Hub id, a save_to_disk folder or parquet files"
                    )
                ds = datasets.load_dataset("parquet", data_files=files, split="train")
        elif root.startswith((".", "/", "~")) or root.count("/") > 1:  # a path, not "owner/name"
            raise PolypsslError(f"dataset path {root} does not exist")
        else:
            ds = datasets.load_dataset(root)
    except PolypsslError:
        raise
    except Exception as err:  # datasets raises many types (network, missing id, bad files)
        raise PolypsslError(f"cannot load HuggingFace dataset {root!r}: {err}") from err
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            log.info("concatenating splits %s of %s", list(ds), root)
        ds = datasets.concatenate_datasets([ds[k] for k in ds])
    return ds


def _prepare_column(ds: Any, column: str, root: str) -> Any:
    import datasets

    if column not in ds.column_names:
        raise PolypsslError(
            f"column {column!r} not in HuggingFace dataset {root!r}; its columns: {', '.join(ds.column_names)} "
            "(set image_column / mask_column)"
        )
    ds = ds.select_columns([column])
    if isinstance(ds.features[column], datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


def _stored_paths(ds: Any, column: str) -> list[str] | None:
    """The file path stored with each image, or None when any row lacks one."""
    try:
        table = ds.data.table if hasattr(ds.data, "table") else ds.data
        paths = table.column(column).combine_chunks().field("path").to_pylist()
    except Exception:  # not a struct column with a path field
        return None
    return paths if all(paths) else None


def _encoded(value: Any) -> Any:
    """The bytes, path or PIL image behind one cell of an image column."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


class _HFColumn:
    """Lazy access to one image column, in a fixed row order."""

    def __init__(self, ds: Any, column: str, root: str) -> None:
        self.ds, self.column, self.root = ds, column, root

    def raw(self, row: int) -> Any:
        return _encoded(self.ds[int(row)][self.column])

    def label(self, row: int) -> str:
        return f"{self.root} row {int(row)} column {self.column!r}"

    def rgb(self, row: int, max_side: int | None = None) -> Image.Image:
        value = self.raw(row)
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        return load_rgb(value, max_side, label=self.label(row))

    def luminance(self, row: int) -> np.ndarray:
        value = self.raw(row)
        if isinstance(value, Image.Image):
            return mask_luminance(value)
        return load_mask_luminance(value, label=self.label(row))

    def mask(self, row: int) -> np.ndarray:
        return binarise(self.luminance(row))


def _order(ds: Any, column: str) -> tuple[np.ndarray, list[str]]:
    paths = _stored_paths(ds, column)
    if paths is None:
        return np.arange(len(ds)), [f"{i:06d}" for i in range(len(ds))]
    order = np.array(sorted(range(len(paths)), key=lambda i: paths[i]), dtype=np.int64)
    return order, [os.path.basename(paths[i]) for i in order]


class HFPairs(LabelledSource):
    image_paths = None

    def __init__(self, images: _HFColumn, masks: _HFColumn, rows: np.ndarray, names: list[str]) -> None:
        self.images, self.masks, self.rows, self.names = images, masks, rows, list(names)

    @classmethod
    def open(cls, root: str, image_column: str, mask_column: str) -> HFPairs:
        ds = load_hf_dataset(root)
        images = _HFColumn(_prepare_column(ds, image_column, root), image_column, root)
        masks = _HFColumn(_prepare_column(ds, mask_column, root), mask_column, root)
        if len(ds) == 0:
            raise PolypsslError(f"HuggingFace dataset {root!r} has no rows")
        rows, names = _order(images.ds, image_column)
        return cls(images, masks, rows, names)

    def subset(self, indices: np.ndarray) -> HFPairs:
        return HFPairs(self.images, self.masks, self.rows[indices], [self.names[i] for i in indices])

    def load_image(self, i: int) -> Image.Image:
        return self.images.rgb(self.rows[i])

    def load_mask(self, i: int) -> np.ndarray:
        return self.masks.mask(self.rows[i])

    def describe(self, i: int) -> tuple[str, str]:
        return self.images.label(self.rows[i]), self.masks.label(self.rows[i])


class HFImages(UnlabelledSource):
    def __init__(self, images: _HFColumn, rows: np.ndarray, decode_max_side: int | None) -> None:
        self.images, self.rows, self.decode_max_side, self.paths = images, rows, decode_max_side, None

    @classmethod
    def open(cls, root: str, image_column: str, decode_max_side: int | None = None) -> HFImages:
        ds = load_hf_dataset(root)
        images = _HFColumn(_prepare_column(ds, image_column, root), image_column, root)
        if len(ds) == 0:
            raise PolypsslError(f"HuggingFace dataset {root!r} has no rows")
        return cls(images, _order(images.ds, image_column)[0], decode_max_side)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Image.Image:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.images.rgb(self.rows[i], self.decode_max_side)

    def head(self, n: int) -> HFImages:
        return HFImages(self.images, self.rows[:n], self.decode_max_side)

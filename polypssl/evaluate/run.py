"""``polypssl evaluate RUN_DIR DATASET ROOT [--split test|all]``: per-image scores of a fine-tuned run.

The model sees each image resized to its training size (224 in the study); its logits are
resized bilinearly to the ORIGINAL mask size and scored there (docs/protocol.md section 4), because
scoring at 224 would reward coarse masks on large images. Under ``accelerate launch`` each process
scores one shard of the images; the rows are gathered, de-duplicated by image index and written
once, so the result does not depend on the number of processes.

Writes ``RUN_DIR/eval/<dataset>-<split>/per_image.csv`` (``image,dice,iou,precision,recall``) and
``summary.json`` (means, pixel-pooled Dice, n, bootstrap intervals).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from polypssl import runs
from polypssl.errors import PolypsslError
from polypssl.evaluate import stats
from polypssl.evaluate.metrics import (
    METRICS,
    logits_at_mask_size,
    pixel_counts,
    pooled_dice,
    scores_from_counts,
)

log = logging.getLogger(__name__)

CSV_COLUMNS = ("image", *METRICS)
MEAN_KEYS = {"dice": "mDice", "iou": "mIoU", "precision": "mPrecision", "recall": "mRecall"}
POOLED_NOTE = (
    "pooled_dice is dataset-level (pixel-pooled) Dice: 2*sum|P&T| / (sum|P| + sum|T|) over all "
    "pixels of all images. It is not mDice (the mean of per-image Dice) and is not comparable with it."
)


def eval_dir(run_dir: str | Path, dataset: str, split: str) -> Path:
    """Where the evaluation of ``run_dir`` on ``dataset``/``split`` lives."""
    return Path(run_dir) / "eval" / f"{dataset}-{split}"


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, Mapping):
        output = output["out"] if "out" in output else next(iter(output.values()))
    elif isinstance(output, (tuple, list)):
        output = output[0]
    if output.dim() == 3:
        output = output.unsqueeze(1)
    if output.dim() != 4 or output.shape[1] != 1:
        raise ValueError(f"the model must return logits [B,1,H,W], got shape {tuple(output.shape)}")
    return output


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    device: torch.device | str = "cpu",
    progress: tqdm | None = None,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> list[dict[str, Any]]:
    """Score every image of ``batches`` (dicts from ``polypssl.data.collate_eval``) with ``model``.

    Each batch holds ``image`` [B,3,S,S] (normalised), ``mask`` (a list of [H,W] masks at their
    original sizes), ``name`` and ``index``. Logits predicted at S are resized to each mask's own
    size (bilinear, ``align_corners=False``) before thresholding. Returns one row per image with
    the four scores and the pixel counts (for pooled Dice). ``autocast`` wraps only the forward
    pass; resizing and thresholding run in float32.
    """
    model.eval()
    rows: list[dict[str, Any]] = []
    for batch in batches:
        with autocast():
            output = model(batch["image"].to(device))
        logits = _logits(output).float()
        for i, mask in enumerate(batch["mask"]):
            mask = torch.as_tensor(mask)
            if mask.dim() == 3:  # [1,H,W]
                mask = mask[0]
            full = logits_at_mask_size(logits[i : i + 1], mask)
            counts = pixel_counts(full.cpu(), mask[None, None].cpu())
            scores = scores_from_counts(**counts)
            index = batch["index"][i]
            rows.append({
                "index": int(index),
                "image": str(batch["name"][i]),
                **{k: float(v[0]) for k, v in scores.items()},
                **{k: int(v[0]) for k, v in counts.items()},
            })
        if progress is not None:
            progress.update(len(batch["mask"]))
    return rows


def merge_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows gathered from all processes -> one row per image index, in index order.

    Padding or overlapping shards repeat an index with identical scores; it is kept once.
    """
    by_index: dict[int, Mapping[str, Any]] = {}
    for row in rows:
        by_index.setdefault(int(row["index"]), row)
    return [dict(by_index[i]) for i in sorted(by_index)]


def per_image_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row["image"], *(repr(float(row[m])) for m in METRICS)])
    return buf.getvalue()


def summarize(rows: list[Mapping[str, Any]], n_resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED) -> dict[str, Any]:
    """Means of the four scores, their 95% bootstrap intervals, pooled Dice and n."""
    n = len(rows)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out
    values = np.array([[row[m] for m in METRICS] for row in rows], dtype=float)
    ci = stats.bootstrap_ci(values, n_resamples, seed)
    for j, m in enumerate(METRICS):
        out[MEAN_KEYS[m]] = float(values[:, j].mean())
    for j, m in enumerate(METRICS):
        out[f"{MEAN_KEYS[m]}_ci95"] = [float(ci[0, j]), float(ci[1, j])]
    if all("inter" in row for row in rows):
        out["pooled_dice"] = pooled_dice(*(torch.tensor([row[k] for row in rows]) for k in ("inter", "pred", "target")))
    out["bootstrap"] = {"method": "percentile", "level": 0.95, "resamples": n_resamples, "seed": seed}
    out["notes"] = {"pooled_dice": POOLED_NOTE}
    return out


def write_evaluation(
    out_dir: str | Path, rows: list[Mapping[str, Any]], summary: Mapping[str, Any] | None = None, **meta: Any
) -> dict[str, Any]:
    """Write ``per_image.csv`` and ``summary.json`` into ``out_dir`` atomically; return the summary."""
    out_dir = Path(out_dir)
    summary = {**(summary if summary is not None else summarize(rows)), **meta}
    runs.atomic_write_text(out_dir / "per_image.csv", per_image_csv(rows))
    runs.write_json(out_dir / "summary.json", summary)
    return summary


def evaluate_dataset(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    collate_fn: Any,
    batch_size: int = 16,
    num_workers: int = 2,
    accelerator: Any = None,
) -> list[dict[str, Any]]:
    """Score ``dataset`` with ``model`` across all Accelerate processes; every process gets all rows.

    Each process takes a contiguous shard of the indices (no padding), so gathering and merging
    by index yields every image exactly once.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    accelerator = accelerator or Accelerator()
    model = model.to(accelerator.device)
    with accelerator.split_between_processes(list(range(len(dataset)))) as shard:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, shard), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, collate_fn=collate_fn, pin_memory=accelerator.device.type == "cuda",
        )
        with tqdm(
            total=len(shard), unit="img", desc="evaluate", disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        ) as bar:
            rows = evaluate_batches(model, loader, accelerator.device, progress=bar, autocast=accelerator.autocast)
    return merge_rows(gather_object(rows) if accelerator.num_processes > 1 else rows)


def evaluate_run(
    run_dir: str | Path,
    dataset: str,
    root: str | Path,
    split: str = "test",
    batch_size: int = 16,
    num_workers: int = 2,
) -> dict[str, Any]:
    """Evaluate the fine-tuned model in ``run_dir`` on ``dataset`` at ``root`` (``split`` test or all).

    Returns the summary written to ``RUN_DIR/eval/<dataset>-<split>/summary.json``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise PolypsslError(
            f"{run_dir / 'run.json'} not found: RUN_DIR must be a finished fine-tuning run "
            "(run `polypssl finetune CONFIG` first, or point at its run directory)"
        )
    from accelerate import Accelerator

    from polypssl import data as pdata
    from polypssl.finetune import load_segmenter

    accelerator = Accelerator()
    model, info = load_segmenter(run_dir)
    image_size = info.get("image_size")
    if image_size is None:
        raise PolypsslError(f"{run_dir / 'run.json'} has no key 'image_size'; re-run `polypssl finetune` for this run")
    source = pdata.open_labelled(dataset, root, split=split)
    eval_set = pdata.EvalDataset(source, image_size)
    if len(eval_set) == 0:
        raise PolypsslError(f"{dataset} at {root} (split {split}) holds no images; check ROOT and --split")
    start = time.perf_counter()
    rows = evaluate_dataset(model, eval_set, pdata.collate_eval, batch_size, num_workers, accelerator)
    seconds = time.perf_counter() - start
    out = eval_dir(run_dir, dataset, split)
    meta = {
        "dataset": dataset, "split": split, "root": str(Path(root).resolve()), "run_dir": str(run_dir.resolve()),
        "image_size": image_size, "world_size": accelerator.num_processes, "time": runs.now(),
        "seconds": round(seconds, 3), "images_per_second": round(len(rows) / seconds, 2) if seconds > 0 else math.nan,
    }
    summary = {**summarize(rows), **meta}  # every process returns the same summary
    if accelerator.is_main_process:
        write_evaluation(out, rows, summary)
        log.info(
            "%s on %s-%s: mDice %.4f  mIoU %.4f  (n=%d, %.1f img/s) -> %s",
            run_dir, dataset, split, summary["mDice"], summary["mIoU"], summary["n"], meta["images_per_second"], out,
        )
    accelerator.wait_for_everyone()
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a fine-tuning run directory (holds run.json)")
    parser.add_argument("dataset", metavar="DATASET", help="dataset name, e.g. kvasir-seg or cvc-clinicdb")
    parser.add_argument("root", metavar="ROOT", help="where the dataset was unpacked")
    parser.add_argument("--split", default="test", help="test (the protocol split) or all (every image); default test")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass and process (default 16)")
    parser.add_argument("--num-workers", type=int, default=2, help="data loading workers per process (default 2)")


def run(args: argparse.Namespace) -> int:
    summary = evaluate_run(args.run_dir, args.dataset, args.root, args.split, args.batch_size, args.num_workers)
    out = eval_dir(args.run_dir, args.dataset, args.split)
    print(
        f"{args.dataset}-{args.split}: n={summary['n']}  mDice {summary.get('mDice', math.nan):.4f}  "
        f"mIoU {summary.get('mIoU', math.nan):.4f}  mPrecision {summary.get('mPrecision', math.nan):.4f}  "
        f"mRecall {summary.get('mRecall', math.nan):.4f}  pooled Dice {summary.get('pooled_dice', math.nan):.4f}  -> {out}"
    )
    return 0

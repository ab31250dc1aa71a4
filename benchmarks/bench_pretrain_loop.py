"""Throughput of ``polypssl pretrain`` against a plain PyTorch loop doing the same step.

Both loops use the same model (the method module), the same DataLoader (seeded views, workers,
pinned memory), the same optimiser and schedule, the same precision (autocast) and the same
per-process batch. The plain loop is what one would write by hand: move the batch, forward,
backward, step, schedule, momentum update, and nothing else. Images/s is measured over the same
window of optimiser steps after a warm-up, with the device synchronised at both ends.

    python benchmarks/bench_pretrain_loop.py                 # CPU: tiny ResNet-18, 64 px
    python benchmarks/bench_pretrain_loop.py --encoder resnet50 --image-size 224 --batch-size 256 \
        --precision bf16 --workers 8                         # on a GPU

Writes a JSON result (``--out``, default ``benchmarks/results/pretrain_loop-<device>.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from polypssl.pretrain.loop import (
    build_loader,
    build_method,
    load,
    per_process_batch,
    pretrain,
    schedule_steps,
)

TINY_HEADS = {
    "mocov3": ["mocov3.dim=64", "mocov3.mlp_dim=256"],
    "barlowtwins": ["barlowtwins.projector=[256,256]"],
    "mae": ["mae.decoder_dim=64", "mae.decoder_depth=1", "mae.decoder_heads=4"],
}
PRESETS = {"mocov3": "mocov3_resnet50", "barlowtwins": "barlowtwins_resnet50", "mae": "mae_vit_b16"}


def write_images(folder: Path, count: int, side: int) -> None:
    """Random JPEGs, a little larger than the crops, so decoding and augmentation cost something."""
    rng = np.random.default_rng(0)
    for i in range(count):
        arr = rng.integers(0, 256, (side + 16, side + 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.jpg", quality=90)


def config(args: argparse.Namespace, data: Path, run_dir: Path, total_steps: int):
    overrides = [
        f"method={args.method}", f"encoder={args.encoder}", f"image_size={args.image_size}",
        f"batch_size={args.batch_size}", "epochs=1", "data.name=folder", f"data.root={data}",
        "optim.warmup_epochs=0.1", f"loop.run_dir={run_dir}", f"loop.max_steps={total_steps}",
        f"loop.num_workers={args.workers}", f"loop.mixed_precision='{args.precision}'", "loop.tracker=none",
        "loop.checkpoint_every=0", "loop.log_every=10", "loop.resume=never",
    ]
    if args.tiny_heads:
        overrides += TINY_HEADS[args.method]
    return load(PRESETS[args.method], overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(args: argparse.Namespace, data: Path, run_dir: Path) -> float:
    """Images/s of ``polypssl.pretrain.loop.pretrain`` over steps ``warmup+1 .. warmup+steps``."""
    cfg = config(args, data, run_dir, args.warmup + args.steps)
    marks: dict[str, float] = {}

    def on_step(session) -> None:
        if session.step in (args.warmup, args.warmup + args.steps):
            sync(session.device)
            marks["start" if session.step == args.warmup else "end"] = time.perf_counter()

    pretrain(cfg, on_step=on_step)
    return args.steps * args.batch_size / (marks["end"] - marks["start"])


def run_plain(args: argparse.Namespace, data: Path, run_dir: Path) -> float:
    """The same step as a hand-written single-device loop."""
    from polypssl.pretrain.loop import bias_learning_rate, learning_rate
    from polypssl.pretrain.optim import build_optimizer, build_scheduler

    cfg = config(args, data, run_dir, args.warmup + args.steps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.loop.seed)
    per_process = per_process_batch(cfg.batch_size, 1, 1)
    loader = build_loader(cfg, per_process, device.type == "cuda")
    total, warmup = schedule_steps(cfg, len(loader))
    model = build_method(cfg).to(device)
    channels_last = device.type == "cuda" and not cfg.encoder.startswith("vit")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    o = cfg.optim
    opt = build_optimizer(model, o.name, learning_rate(cfg), o.weight_decay, betas=tuple(o.betas),
                          momentum=o.momentum, exclude_bias_and_norm=o.exclude_bias_and_norm,
                          bias_lr=bias_learning_rate(cfg))
    sched = build_scheduler(opt, warmup, total, final_ratio=o.final_lr_ratio)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    loader.sampler.set_epoch(0)
    model.train()
    start = end = 0.0
    for step, batch in enumerate(loader, start=1):
        views = batch if isinstance(batch, (list, tuple)) else [batch]
        views = [v.to(device, non_blocking=True) for v in views]
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        batch = views if isinstance(batch, (list, tuple)) else views[0]
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            loss = model(batch)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        model.after_optimizer_step(step / total)
        if step in (args.warmup, args.warmup + args.steps):
            sync(device)
            if step == args.warmup:
                start = time.perf_counter()
            else:
                end = time.perf_counter()
                break
    return args.steps * args.batch_size / (end - start)


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="mocov3", choices=sorted(PRESETS))
    p.add_argument("--encoder", default="resnet50" if cuda else "resnet18")
    p.add_argument("--image-size", type=int, default=224 if cuda else 64)
    p.add_argument("--batch-size", type=int, default=256 if cuda else 32)
    p.add_argument("--precision", default="bf16" if cuda else "no", choices=("no", "bf16", "fp16"))
    p.add_argument("--workers", type=int, default=8 if cuda else 0)
    p.add_argument("--steps", type=int, default=30 if cuda else 12, help="measured optimiser steps")
    p.add_argument("--warmup", type=int, default=10 if cuda else 3, help="steps before the measurement")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each loop; the best counts")
    p.add_argument("--tiny-heads", action=argparse.BooleanOptionalAction, default=not cuda)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    device = torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})"
    ours: list[float] = []
    plain: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        data = Path(tmp) / "images"
        data.mkdir()
        # one epoch longer than the run, so neither loop crosses an epoch boundary
        write_images(data, (args.warmup + args.steps + 1) * args.batch_size, args.image_size)
        for r in range(args.repeats):
            plain.append(run_plain(args, data, Path(tmp) / f"plain-{r}"))
            ours.append(run_ours(args, data, Path(tmp) / f"ours-{r}"))
            print(f"repeat {r}: plain {plain[-1]:.1f} images/s, ours {ours[-1]:.1f} images/s", file=sys.stderr)
    best_ours, best_plain = max(ours), max(plain)
    result = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "method": args.method,
        "encoder": args.encoder,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "workers": args.workers,
        "measured_steps": args.steps,
        "warmup_steps": args.warmup,
        "ours_images_per_s": round(best_ours, 2),
        "plain_images_per_s": round(best_plain, 2),
        "overhead_pct": round(100.0 * (best_plain - best_ours) / best_plain, 2),
        "ours_runs": [round(v, 2) for v in ours],
        "plain_runs": [round(v, 2) for v in plain],
        "median_overhead_pct": round(
            100.0 * (statistics.median(plain) - statistics.median(ours)) / statistics.median(plain), 2
        ),
    }
    out = args.out or Path(__file__).parent / "results" / f"pretrain_loop-{'cuda' if cuda else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

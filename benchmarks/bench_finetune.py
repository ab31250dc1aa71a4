"""Fine-tuning throughput and memory of the study's two segmenters at 224 px, and a validation split.

For ResNet50 + DeepLabV3+ and ViT-B/16 + DPT: training images/s (forward, soft Dice loss,
backward, AdamW step; bf16 autocast on CUDA), peak memory (CUDA: max allocated; CPU: peak RSS of
a fresh process per architecture), and the time of one validation pass split into the forward
pass, resizing the logits to the original mask sizes and the per-image metrics, on masks with
Kvasir-SEG's size range. Runs on CUDA when present, else on the CPU with a small batch.

    python benchmarks/bench_finetune.py --out benchmarks/results/finetune_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ARCHS = ("resnet50", "vit_b16")
#: (height, width) of Kvasir-SEG masks: they range from 332x487 to 1920x1072, most near 530x620.
KVASIR_SIZES = ((530, 622), (576, 720), (1072, 1920), (332, 487), (1024, 1280), (626, 546))


def bench_one(arch: str, device: str, batch: int, steps: int, val_images: int) -> dict:
    from polypssl.finetune import build_segmenter
    from polypssl.finetune.loop import validate
    from polypssl.finetune.loss import soft_dice_loss

    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_segmenter(arch, "random", 224).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    x = torch.randn(batch, 3, 224, 224, device=dev)
    y = (torch.rand(batch, 1, 224, 224, device=dev) > 0.8).float()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with amp:
            loss = soft_dice_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, kernel selection)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    result = {
        "arch": arch, "decoder": model.decoder_name, "device": str(dev), "batch": batch, "steps": steps,
        "train_images_per_s": batch * steps / seconds,
        "train_step_s": seconds / steps,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if dev.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20

    gen = torch.Generator().manual_seed(0)
    batches = []
    for start_i in range(0, val_images, batch):
        n = min(batch, val_images - start_i)
        sizes = [KVASIR_SIZES[(start_i + i) % len(KVASIR_SIZES)] for i in range(n)]
        batches.append({
            "image": torch.randn(n, 3, 224, 224, generator=gen).to(dev),
            "mask": [(torch.rand(h, w, generator=gen) > 0.8).to(dev) for h, w in sizes],
            "name": [f"img{start_i + i}" for i in range(n)], "index": list(range(start_i, start_i + n)),
        })
    with amp:
        val = validate(model, batches)
    result.update({
        "val_images": val_images,
        "val_forward_s": val["val_forward_s"], "val_resize_s": val["val_resize_s"], "val_metrics_s": val["val_metrics_s"],
    })
    total = val["val_forward_s"] + val["val_resize_s"] + val["val_metrics_s"]
    result["val_resize_and_metrics_share"] = (val["val_resize_s"] + val["val_metrics_s"]) / total
    if dev.type == "cpu":
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/finetune.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="per-step batch (default: 4 on CPU, 48 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--val-images", type=int, default=None, help="default: 12 on CPU, 100 on CUDA (Kvasir's val split)")
    parser.add_argument("--arch", choices=ARCHS, default=None, help="one architecture in this process (internal)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    batch = args.batch or (48 if cuda else 4)
    steps = args.steps or (20 if cuda else 3)
    val_images = args.val_images or (100 if cuda else 12)
    if args.arch:
        print(json.dumps(bench_one(args.arch, args.device, batch, steps, val_images)))
        return
    results = []
    for arch in ARCHS:  # a fresh process per architecture, so peak RSS is that architecture's
        cmd = [sys.executable, __file__, "--arch", arch, "--device", args.device, "--batch", str(batch),
               "--steps", str(steps), "--val-images", str(val_images)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1], indent=1), flush=True)
    report = {
        "benchmark": "finetune", "image_size": 224, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "host": platform.node(), "device_name": torch.cuda.get_device_name() if cuda else platform.processor(),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

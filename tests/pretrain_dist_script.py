"""Two optimiser steps of MoCo v3 and Barlow Twins on a fixed global batch, under any world size.

Run by tests/test_distributed.py, once as a plain process and once under
``accelerate launch --cpu --num_processes 2``; each process takes its slice of the same global
batch. Rank 0 writes the mean loss and the gradients of a few parameters per step to
``OUT/<method>.pt`` so the test can compare the two runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from polypssl.distributed import convert_sync_batchnorm, rank, world_size
from polypssl.pretrain import BarlowTwins, BarlowTwinsConfig, MoCoV3, MoCoV3Config, build_optimizer

GLOBAL_BATCH = 8
SIZE = 32
WATCHED = ("backbone.conv1.weight", "backbone.layer1.0.bn2.weight", "projector.0.weight", "projector.1.bias")


def build(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if method == "mocov3":
        return MoCoV3("resnet18", SIZE, MoCoV3Config(mlp_dim=32, dim=16))
    return BarlowTwins("resnet18", SIZE, BarlowTwinsConfig(projector=[32, 32, 32]))


def run(method: str, out: Path, accelerator: Accelerator) -> None:
    model = convert_sync_batchnorm(build(method), accelerator.device)
    opt = build_optimizer(model, "sgd", lr=0.05, weight_decay=0.0)
    model, opt = accelerator.prepare(model, opt)
    gen = torch.Generator().manual_seed(1)
    x1 = torch.randn(GLOBAL_BATCH, 3, SIZE, SIZE, generator=gen)
    x2 = torch.randn(GLOBAL_BATCH, 3, SIZE, SIZE, generator=gen)
    per = GLOBAL_BATCH // world_size()
    local = slice(rank() * per, (rank() + 1) * per)
    record: dict[str, list] = {"loss": [], "grads": []}
    for _ in range(2):
        loss = model([x1[local], x2[local]])
        accelerator.backward(loss)
        record["loss"].append(accelerator.reduce(loss.detach(), "mean").item())
        params = dict(accelerator.unwrap_model(model).named_parameters())
        record["grads"].append({name: params[name].grad.clone() for name in WATCHED})
        opt.step()
        opt.zero_grad()
        accelerator.unwrap_model(model).after_optimizer_step(0.5)
    record["running_mean"] = accelerator.unwrap_model(model).backbone.bn1.running_mean.clone()
    if accelerator.is_main_process:
        torch.save(record, out / f"{method}.pt")


def main() -> None:
    out = Path(sys.argv[1])
    accelerator = Accelerator(cpu=True)
    for method in sys.argv[2:] or ["mocov3", "barlowtwins"]:
        run(method, out, accelerator)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()

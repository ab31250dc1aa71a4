"""``polypssl pretrain CONFIG [key=value ...]``: the one self-supervised pretraining loop.

MoCo v3, Barlow Twins and MAE share it; each method is a module whose ``forward(batch)`` is the
training loss (so DDP sees a normal forward pass) and whose ``after_optimizer_step(progress)``
does per-step updates (MoCo v3's momentum encoder). The loop itself is a plain Accelerate loop;
:class:`polypssl.training.TrainingSession` does the bookkeeping (run directory, checkpoints,
resume, trackers, progress).

Why the loop looks the way it does:

* ``batch_size`` is the GLOBAL batch; each process loads ``batch_size / (processes x
  accumulation)`` images, so a preset means the same optimisation on 1 GPU or 64.
* The learning rate is ``optim.base_lr x batch_size / 256`` (the recipes' linear scaling rule),
  warmed up and then cosine-decayed per optimiser step. The scheduler is stepped by this loop
  exactly once per optimiser step (only when gradients are synchronised), not once per process.
* Step randomness (MAE's masks) is seeded per (seed, epoch, batch, rank) by the training session,
  so a run resumed from a checkpoint takes exactly the steps an uninterrupted run takes.
* The loss stays on the device between log steps: one host synchronisation every
  ``loop.log_every`` steps (and before every checkpoint), where the loss averaged over processes
  is logged and checked for NaN/inf on every process at once (so no process is left waiting).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from polypssl.config import load_config, resolve_config_path
from polypssl.data.sampling import EpochSampler, SeededDataset
from polypssl.errors import PolypsslError
from polypssl.pretrain.barlowtwins import BarlowTwinsConfig
from polypssl.pretrain.mae import MAEConfig
from polypssl.pretrain.mocov3 import MoCoV3Config
from polypssl.runs import is_complete
from polypssl.training import LoopConfig, TrainingSession, per_process_batch

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.safetensors"
#: method name -> (module, class). Imported when used.
METHODS: dict[str, tuple[str, str]] = {
    "mocov3": ("polypssl.pretrain.mocov3", "MoCoV3"),
    "barlowtwins": ("polypssl.pretrain.barlowtwins", "BarlowTwins"),
    "mae": ("polypssl.pretrain.mae", "MAE"),
}
#: what the exported backbone records as its pretraining data, by dataset name (docs/protocol.md section 1)
DATA_LABELS = {"hyperkvasir-unlabelled": "HK", "imagenet-1k": "IN"}


@dataclass
class PretrainDataConfig:
    """Where the images come from (``polypssl.data.open_unlabelled``)."""

    name: str = "hyperkvasir-unlabelled"  # hyperkvasir-unlabelled | imagenet-1k | folder | hf | kvasir-seg | cvc-clinicdb
    root: str = "data/hyperkvasir-unlabelled"  # folder (or Hub dataset id for name=hf)
    label: str | None = None  # pretraining data recorded in the backbone; default: HK, IN or the dataset
    max_images: int | None = None  # keep the first N images (sorted): quick runs
    image_column: str = "image"  # name=hf: column holding the images
    decode_max_side: int | None = None  # decode JPEGs at reduced scale, keeping both sides >= this (speed)


@dataclass
class ViewsConfig:
    """Augmentation options (``polypssl.pretrain.views.build_views``); ``null`` = the recipe's value."""

    crop_min: float | None = None  # RandomResizedCrop minimum scale (MoCo v3: .2 ResNet, .08 ViT; BT .08; MAE .2)
    interpolation: str | None = None  # bilinear | bicubic (recipe default per method)
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1])  # blur probability, view 1 / view 2
    solarize_p: list[float] = field(default_factory=lambda: [0.0, 0.2])  # solarisation probability, view 1 / 2


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (``polypssl.pretrain.optim``)."""

    name: str = "lars"  # lars | adamw | sgd
    base_lr: float = 0.6  # lr = base_lr x batch_size / 256
    lr: float | None = None  # absolute learning rate; overrides base_lr scaling when set
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    momentum: float = 0.9  # lars / sgd
    exclude_bias_and_norm: bool = True  # no weight decay (and no LARS adaptation) on biases and norms
    bias_base_lr: float | None = None  # own base lr for biases and norms (Barlow Twins: 0.0048), scaled alike
    warmup_epochs: float = 10.0  # linear warm-up, then cosine decay to the end of the run
    final_lr_ratio: float = 0.0  # the cosine ends at this fraction of the peak lr (Barlow Twins: 0.001)


@dataclass
class PretrainConfig:
    """Schema of ``configs/pretrain/*.yaml``; every key can be overridden as ``key=value``."""

    method: str = "mocov3"  # mocov3 | barlowtwins | mae
    encoder: str = "resnet50"  # resnet50 | vit_b16 | resnet18 | vit_small16 | vit_tiny16
    weights: str = "random"  # initial encoder weights (any weight spec)
    image_size: int = 224
    epochs: int = 100
    batch_size: int = 4096  # GLOBAL batch: all processes x gradient accumulation
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mocov3: MoCoV3Config = field(default_factory=MoCoV3Config)
    barlowtwins: BarlowTwinsConfig = field(default_factory=BarlowTwinsConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(run_dir="runs/pretrain"))


# ----------------------------------------------------------------------------- small pieces


def data_label(data: PretrainDataConfig) -> str:
    """``HK``, ``IN``, or a readable dataset name, unless ``data.label`` says otherwise."""
    if data.label:
        return data.label
    if data.name in DATA_LABELS:
        return DATA_LABELS[data.name]
    if data.name == "folder":
        return Path(data.root).name or data.name
    if data.name == "hf":
        return data.root
    return data.name


def learning_rate(cfg: PretrainConfig) -> float:
    """``optim.lr`` if set, else the linear scaling rule ``base_lr x batch_size / 256``."""
    return cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.base_lr * cfg.batch_size / 256


def bias_learning_rate(cfg: PretrainConfig) -> float | None:
    """The biases' and norms' own learning rate (``optim.bias_base_lr`` scaled like the weights')."""
    if cfg.optim.bias_base_lr is None:
        return None
    return cfg.optim.bias_base_lr * learning_rate(cfg) / cfg.optim.base_lr


def schedule_steps(cfg: PretrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total, warm-up) optimiser steps. ``loop.max_steps`` shortens the whole schedule, keeping its shape."""
    total = cfg.epochs * steps_per_epoch
    if cfg.loop.max_steps is not None:
        total = min(total, cfg.loop.max_steps)
    warmup = round(total * min(cfg.optim.warmup_epochs / cfg.epochs, 1.0))
    return max(total, 1), warmup


def validate(cfg: PretrainConfig) -> None:
    """Cheap checks that would otherwise fail late (after data and model are built)."""
    if cfg.method not in METHODS:
        raise PolypsslError(f"method must be one of {', '.join(METHODS)}, got '{cfg.method}'")
    if cfg.method == "mae" and not cfg.encoder.startswith("vit"):
        raise PolypsslError(f"method=mae needs a ViT encoder (vit_b16, vit_small16, vit_tiny16), got '{cfg.encoder}'")
    for key in ("epochs", "image_size"):
        if getattr(cfg, key) < 1:
            raise PolypsslError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.loop.max_steps is not None and cfg.loop.max_steps < 1:
        raise PolypsslError(f"loop.max_steps must be at least 1 (or null), got {cfg.loop.max_steps}")
    if cfg.loop.gradient_accumulation_steps < 1:
        raise PolypsslError(
            f"loop.gradient_accumulation_steps must be at least 1, got {cfg.loop.gradient_accumulation_steps}"
        )
    if cfg.loop.num_workers < 0:
        raise PolypsslError(f"loop.num_workers must be 0 or more, got {cfg.loop.num_workers}")


def build_method(cfg: PretrainConfig) -> nn.Module:
    """The method module (``.backbone``, ``forward(batch) -> loss``, ``after_optimizer_step``)."""
    import importlib

    module_name, class_name = METHODS[cfg.method]
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls(cfg.encoder, cfg.image_size, getattr(cfg, cfg.method), weights=cfg.weights)
    except ValueError as err:  # invalid method/encoder combination reported by the method
        raise PolypsslError(f"cannot build {cfg.method} with encoder={cfg.encoder}: {err}") from err


def build_loader(cfg: PretrainConfig, per_process: int, use_cuda: bool) -> DataLoader:
    """Seeded two-view (or one-view) DataLoader over the unlabelled images."""
    from polypssl.data import open_unlabelled
    from polypssl.pretrain.views import build_views

    d = cfg.data
    source = open_unlabelled(
        d.name, d.root, image_column=d.image_column, max_images=d.max_images, decode_max_side=d.decode_max_side
    )
    if len(source) < cfg.batch_size:
        raise PolypsslError(
            f"data at {d.root} ({d.name}) has {len(source)} images, fewer than one global batch "
            f"(batch_size={cfg.batch_size}); lower batch_size or point data.root at more images"
        )
    v = cfg.views
    views = build_views(
        cfg.method, cfg.image_size, encoder=cfg.encoder, crop_min=v.crop_min, interpolation=v.interpolation,
        blur_p=tuple(v.blur_p), solarize_p=tuple(v.solarize_p),
    )
    dataset = SeededDataset(source, views, seed=cfg.loop.seed)
    workers = cfg.loop.num_workers
    return DataLoader(
        dataset,
        batch_size=per_process,
        sampler=EpochSampler(len(dataset), seed=cfg.loop.seed),
        num_workers=workers,
        pin_memory=use_cuda,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=True,
    )


def _batch_size_of(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(first.shape[0])


def _channels_last(batch: Any) -> Any:
    if isinstance(batch, (list, tuple)):
        return type(batch)(_channels_last(b) for b in batch)
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch


# ----------------------------------------------------------------------------- the loop

StepCallback = Callable[[TrainingSession], None]


def pretrain(cfg: PretrainConfig, on_step: StepCallback | None = None) -> Path:
    """Pretrain ``cfg.encoder`` with ``cfg.method``; returns the run directory.

    ``on_step(session)`` is called after every optimiser step (after logging and
    checkpointing), for hooks such as early exits in notebooks and tests.
    """
    validate(cfg)
    run_dir = Path(cfg.loop.run_dir)
    if is_complete(run_dir) and (run_dir / BACKBONE_FILE).is_file():
        if os.environ.get("RANK", "0") == "0":
            print(
                f"polypssl pretrain: {run_dir} is already complete ({run_dir / BACKBONE_FILE}); nothing to do. "
                f"Use another loop.run_dir to train again."
            )
        return run_dir

    label = data_label(cfg.data)
    session = TrainingSession(cfg, cfg.loop, stage="pretrain", method=cfg.method, encoder=cfg.encoder, data=label)
    acc = session.accelerator
    use_cuda = session.device.type == "cuda"
    accumulation = cfg.loop.gradient_accumulation_steps
    per_process = per_process_batch(cfg.batch_size, session.world_size, accumulation)
    loader = build_loader(cfg, per_process, use_cuda)
    batches_per_epoch = len(loader.dataset) // (per_process * session.world_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    total_steps, warmup_steps = schedule_steps(cfg, steps_per_epoch)

    from polypssl.distributed import convert_sync_batchnorm
    from polypssl.pretrain.optim import build_optimizer, build_scheduler

    model = build_method(cfg)
    channels_last = use_cuda and not cfg.encoder.startswith("vit")  # pays for convolutions only
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = convert_sync_batchnorm(model, session.device)
    lr = learning_rate(cfg)
    optimizer = build_optimizer(
        model, cfg.optim.name, lr, cfg.optim.weight_decay, betas=tuple(cfg.optim.betas),
        momentum=cfg.optim.momentum, exclude_bias_and_norm=cfg.optim.exclude_bias_and_norm,
        bias_lr=bias_learning_rate(cfg),
    )
    scheduler = build_scheduler(optimizer, warmup_steps, total_steps, final_ratio=cfg.optim.final_lr_ratio)
    # Preparing the scheduler registers it for checkpointing; the session was built with
    # step_scheduler_with_optimizer=False, so it steps only when this loop steps it.
    model, optimizer, loader, scheduler = session.prepare(model, optimizer, loader, scheduler)
    method = acc.unwrap_model(model)
    session.resume()
    if session.is_main:
        log.info(
            "pretrain %s/%s on %s: %d processes x %d images x %d accumulation = batch %d, lr %.4g, "
            "%d steps (%d per epoch, %d warm-up)",
            cfg.method, cfg.encoder, label, session.world_size, per_process, accumulation, cfg.batch_size,
            lr, total_steps, steps_per_epoch, warmup_steps,
        )

    loss_sum = torch.zeros((), device=session.device)
    loss_terms = 0
    images_in_step = 0
    metrics: dict[str, float] = {}

    def flush() -> dict[str, float]:
        """One host sync: the loss averaged over processes and steps since the last flush."""
        nonlocal loss_sum, loss_terms
        mean = acc.reduce(loss_sum, reduction="mean") / max(loss_terms, 1)
        session.check_finite(mean)  # same value on every process: all stop together
        out = {"loss": mean.item(), "lr": scheduler.get_last_lr()[0]}
        momentum = getattr(method, "current_momentum", None)
        if momentum is not None:
            out["momentum"] = float(momentum)
        loss_sum = torch.zeros((), device=session.device)
        loss_terms = 0
        return out

    log_every = max(cfg.loop.log_every, 1)
    ckpt_every = cfg.loop.checkpoint_every
    for _epoch in session.epochs(cfg.epochs):
        model.train()
        for batch in session.batches(loader):
            if channels_last:
                batch = _channels_last(batch)
            images_in_step += _batch_size_of(batch)
            with acc.accumulate(model):
                loss = model(batch)
                acc.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().float()
            loss_terms += 1
            if not acc.sync_gradients:
                continue
            scheduler.step()
            next_step = session.step + 1
            method.after_optimizer_step(next_step / total_steps)
            if (
                next_step % log_every == 0
                or (ckpt_every and next_step % ckpt_every == 0)
                or next_step >= total_steps
            ):
                metrics = flush()
            session.step_done(metrics, images=images_in_step)
            images_in_step = 0
            if on_step is not None:
                on_step(session)
            if session.should_stop:
                break
        if session.should_stop:
            break
        if loss_terms:
            metrics = flush()  # checked before the epoch-end checkpoint
        session.epoch_done()

    if metrics and session.step % log_every:
        session.log({"step": session.step, "epoch": session.state.epoch, **metrics})  # the last step's loss
    if session.is_main:
        from polypssl.backbones import save_backbone

        save_backbone(
            method.backbone, run_dir / BACKBONE_FILE, arch=cfg.encoder, method=cfg.method, data=label,
            image_size=cfg.image_size, epochs=cfg.epochs, steps=session.step, batch_size=cfg.batch_size,
        )
        log.info("wrote %s", run_dir / BACKBONE_FILE)
    session.finish(backbone=BACKBONE_FILE)
    return run_dir


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file or preset name (mocov3_resnet50, mocov3_vit_b16, ...)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. epochs=10")


def load(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """The resolved config of a preset name or YAML path plus ``key=value`` overrides."""
    return load_config(PretrainConfig, resolve_config_path(config, "pretrain"), overrides)


def run(args: argparse.Namespace) -> int:
    pretrain(load(args.config, args.overrides))
    return 0

"""``polypssl finetune CONFIG [key=value ...]``: fine-tune a segmenter with the study's recipe.

One plain epoch loop on :class:`polypssl.training.TrainingSession` (the bookkeeping the
pretraining stage shares: run directory, checkpoints, exact resume, trackers, progress,
non-finite guard). Per epoch: train on the protocol's train split with the protocol's
augmentations and the soft Dice loss, then score the val split per image at the ORIGINAL mask
resolution (docs/protocol.md section 4), step ReduceLROnPlateau on val mDice and keep the best
model as ``model.safetensors``. The run ends with ``run.json``, what the evaluation report needs.
Also runs as ``accelerate launch -m polypssl.finetune CONFIG [key=value ...]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from polypssl.config import load_config, resolve_config_path
from polypssl.data.sampling import EpochSampler, SeededDataset
from polypssl.errors import PolypsslError
from polypssl.finetune.loss import soft_dice_loss
from polypssl.finetune.segmenters import build_segmenter, freeze_encoder
from polypssl.runs import is_complete, read_json, save_safetensors, write_json
from polypssl.training import LoopConfig, TrainingSession, per_process_batch

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
RUN_INFO_FILE = "run.json"


@dataclass
class FinetuneDataConfig:
    """Where the labelled data is; the protocol's split picks train and val from it."""

    name: str = "kvasir-seg"  # kvasir-seg | cvc-clinicdb | hf
    root: str = "data"  # folder holding Kvasir-SEG/ (or the dataset folder itself)
    train_split: str = "train"
    val_split: str = "val"
    image_column: str = "image"  # hf only
    mask_column: str = "annotation"  # hf only


@dataclass
class FinetuneConfig:
    """The fine-tuning recipe (docs/protocol.md section 2); defaults are the study's values."""

    encoder: str = "resnet50"
    weights: str = "random"  # random | supervised[:TAG] | file:PATH | mocov3:PATH | mae:PATH | barlowtwins:PATH | auto:PATH
    pretrain_data: str | None = None  # recorded in run.json; None: derived from the weights
    pretrain_method: str | None = None  # likewise
    image_size: int = 224
    epochs: int = 200
    batch_size: int = 48  # GLOBAL: across processes and gradient accumulation
    val_batch_size: int | None = None  # per process; None: the per-process training batch
    lr: float = 1e-4
    weight_decay: float = 0.01  # torch.optim.AdamW's default, which the study kept
    lr_factor: float = 0.5
    lr_patience: int = 10  # epochs without val improvement before halving the lr (torch default)
    min_lr: float = 1e-6
    freeze_encoder: bool = False
    early_stop_patience: int = 0  # epochs without val improvement before stopping; 0 = never
    val_overlays: int = 4  # validation images shown to W&B as image / target / prediction
    overlay_every: int = 10  # epochs between overlay uploads (and at every new best)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


# ---------------------------------------------------------------------------------------------- data


def open_split(cfg: FinetuneConfig, split: str) -> Any:
    from polypssl.data import open_labelled

    return open_labelled(
        cfg.data.name, cfg.data.root, split=split, image_column=cfg.data.image_column, mask_column=cfg.data.mask_column
    )


def train_dataset(cfg: FinetuneConfig) -> SeededDataset:
    """The train split under the protocol's augmentations, seeded per (seed, epoch, index)."""
    from polypssl.data import SegmentationTrainTransform

    return SeededDataset(open_split(cfg, cfg.data.train_split), SegmentationTrainTransform(cfg.image_size), cfg.loop.seed)


def train_loader(cfg: FinetuneConfig, dataset: SeededDataset, batch: int) -> DataLoader:
    # A last batch of one image breaks BatchNorm in training mode (DeepLabV3+'s image pooling); drop it.
    drop_last = len(dataset) % batch == 1
    return DataLoader(
        dataset, batch_size=batch, sampler=EpochSampler(len(dataset), seed=cfg.loop.seed),
        num_workers=cfg.loop.num_workers, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def val_loader(cfg: FinetuneConfig, batch: int) -> DataLoader:
    from polypssl.data import EvalDataset, collate_eval

    dataset = EvalDataset(open_split(cfg, cfg.data.val_split), cfg.image_size)
    return DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=cfg.loop.num_workers, collate_fn=collate_eval)


# ---------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model: nn.Module, loader: Any, session: TrainingSession | None = None, overlays: int = 0) -> dict[str, Any]:
    """Per-image val Dice at the original mask size, over all processes without duplicates.

    Returns ``val_mDice``, ``val_n``, seconds spent in the forward pass, in resizing the logits
    and in the metrics, and (main process, when ``overlays``) a few (image, target, prediction)
    triples for display.
    """
    # to the right of finetune: imported late
    from polypssl.evaluate.metrics import logits_at_mask_size, per_image_scores

    accelerator = session.accelerator if session is not None else None
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    dice_parts, index_parts, shown = [], [], []
    t_forward = t_resize = t_metrics = 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for batch in loader:
        t0 = time.perf_counter()
        logits = model(batch["image"].to(device)).float()
        sync()
        t1 = time.perf_counter()
        full = [logits_at_mask_size(logits[i : i + 1], mask) for i, mask in enumerate(batch["mask"])]
        sync()
        t2 = time.perf_counter()
        dice = torch.cat([
            per_image_scores(f, torch.as_tensor(m, device=f.device)[None, None])["dice"] for f, m in zip(full, batch["mask"])
        ])
        index = torch.as_tensor(batch["index"], device=dice.device)
        if accelerator is not None:
            dice, index = accelerator.gather_for_metrics((dice, index))
        dice_parts.append(dice.cpu())
        index_parts.append(index.cpu())
        t3 = time.perf_counter()
        t_forward, t_resize, t_metrics = t_forward + t1 - t0, t_resize + t2 - t1, t_metrics + t3 - t2
        if len(shown) < overlays:
            for i in range(min(overlays - len(shown), len(full))):
                shown.append((batch["image"][i].cpu(), torch.as_tensor(batch["mask"][i]).cpu(), (full[i][0, 0] > 0).cpu()))
    model.train(was_training)
    dice_all, index_all = torch.cat(dice_parts), torch.cat(index_parts)
    # gather_for_metrics drops the padding of the last batch; de-duplicating by index keeps that exact anyway.
    unique: dict[int, float] = {}
    for i, d in zip(index_all.tolist(), dice_all.tolist()):
        unique.setdefault(i, d)
    scores = list(unique.values())
    return {
        "val_mDice": float(sum(scores) / max(len(scores), 1)),
        "val_n": len(scores),
        "val_forward_s": t_forward,
        "val_resize_s": t_resize,
        "val_metrics_s": t_metrics,
        "overlays": shown,
    }


def _log_overlays(session: TrainingSession, shown: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], epoch: int) -> None:
    if not shown or session.loop.tracker != "wandb" or not session.is_main:
        return
    import wandb

    from polypssl.finetune.visual import denormalise, overlay_panel

    images = [
        wandb.Image(overlay_panel(denormalise(img), target.numpy(), pred.numpy()), caption=f"image | target | prediction (epoch {epoch})")
        for img, target, pred in shown
    ]
    session.accelerator.get_tracker("wandb", unwrap=True).log({"val_overlays": images}, step=session.step)


# ---------------------------------------------------------------------------------------------- run


def run_info(cfg: FinetuneConfig, **extra: Any) -> dict[str, Any]:
    """What ``run.json`` records about the model: its parts, its pretraining and its fine-tuning data."""
    from polypssl.backbones import describe_weights
    from polypssl.finetune.segmenters import decoder_for

    described = dict(describe_weights(cfg.weights))
    return {
        "encoder": cfg.encoder,
        "decoder": decoder_for(cfg.encoder),
        "image_size": cfg.image_size,
        "weights": cfg.weights,
        "pretrain_data": cfg.pretrain_data or described.get("pretrain_data"),
        "pretrain_method": cfg.pretrain_method or described.get("pretrain_method"),
        "finetune_dataset": cfg.data.name,
        "freeze_encoder": cfg.freeze_encoder,
        "seed": cfg.loop.seed,
        **extra,
    }


def _save_model(model: nn.Module, path: Path, cfg: FinetuneConfig, decoder: str) -> None:
    state = {k: v for k, v in model.state_dict().items()}
    save_safetensors(state, path, metadata={"encoder": cfg.encoder, "decoder": decoder, "image_size": str(cfg.image_size)})


def finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune as ``cfg`` says; returns the run directory (also when it was already complete)."""
    run_dir = Path(cfg.loop.run_dir)
    if is_complete(run_dir) and (run_dir / MODEL_FILE).is_file() and (run_dir / RUN_INFO_FILE).is_file():
        log.info("%s is already complete (best val mDice %.4f); nothing to do. Use another loop.run_dir to train again.",
                 run_dir, read_json(run_dir / RUN_INFO_FILE).get("best_val_mDice", float("nan")))
        return run_dir
    if cfg.epochs < 1:
        raise PolypsslError(f"epochs must be at least 1, got {cfg.epochs}")
    from polypssl.distributed import convert_sync_batchnorm

    session = TrainingSession(cfg, cfg.loop, stage="finetune", encoder=cfg.encoder, weights=cfg.weights)
    accelerator = session.accelerator
    batch = per_process_batch(cfg.batch_size, session.world_size, cfg.loop.gradient_accumulation_steps)

    model = build_segmenter(cfg.encoder, cfg.weights, cfg.image_size)
    decoder = model.decoder_name
    model = convert_sync_batchnorm(model, session.device)
    if cfg.freeze_encoder:
        freeze_encoder(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Stepped once per epoch on val mDice by every process with the same value, so not prepared.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
    )
    train_data = train_dataset(cfg)
    loader = train_loader(cfg, train_data, batch)
    val = val_loader(cfg, cfg.val_batch_size or batch)
    model, optimizer, loader, val = session.prepare(model, optimizer, loader, val)
    session.register(scheduler)
    session.resume()
    extra = session.state.extra
    extra.setdefault("best_val_mDice", -1.0)
    extra.setdefault("best_epoch", -1)
    extra.setdefault("epochs_since_best", 0)
    extra.setdefault("epochs_run", 0)
    if session.is_main:
        log.info("fine-tuning %s+%s (%s) on %s: %d train / %d val images, global batch %d over %d process(es)",
                 cfg.encoder, decoder, cfg.weights, cfg.data.name, len(train_data), len(val.dataset),
                 cfg.batch_size, session.world_size)

    def stop_early() -> bool:
        return bool(cfg.early_stop_patience) and extra["epochs_since_best"] >= cfg.early_stop_patience

    session.should_stop = stop_early()
    for epoch in session.epochs(cfg.epochs):
        model.train()
        for images, masks in session.batches(loader):
            with accelerator.accumulate(model):
                loss = soft_dice_loss(model(images), masks)
                session.check_finite(loss)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            extra["train_loss_sum"] = extra.get("train_loss_sum", 0.0) + loss.item()
            extra["train_batches"] = extra.get("train_batches", 0) + 1
            if accelerator.sync_gradients:
                session.step_done({"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}, images=len(images))
            if session.should_stop:
                break
        overlays = cfg.val_overlays if session.loop.tracker == "wandb" and session.is_main else 0
        result = validate(model, val, session, overlays=overlays)
        score = result["val_mDice"]
        improved = score > extra["best_val_mDice"]
        if improved:
            extra.update(best_val_mDice=score, best_epoch=epoch, epochs_since_best=0)
            if session.is_main:
                _save_model(accelerator.unwrap_model(model), run_dir / MODEL_FILE, cfg, decoder)
        else:
            extra["epochs_since_best"] += 1
        scheduler.step(score)
        local_loss = torch.tensor(extra.pop("train_loss_sum", 0.0) / max(extra.pop("train_batches", 0), 1), device=session.device)
        train_loss = float(accelerator.reduce(local_loss, reduction="mean"))
        if improved or (cfg.overlay_every and epoch % cfg.overlay_every == 0):
            _log_overlays(session, result["overlays"], epoch)
        metrics = {k: v for k, v in result.items() if k != "overlays"}
        extra["epochs_run"] += 1
        session.epoch_done({
            "train_loss": train_loss, **metrics, "lr": optimizer.param_groups[0]["lr"],
            "best_val_mDice": extra["best_val_mDice"], "best_epoch": extra["best_epoch"],
        })
        if session.is_main:
            log.info("epoch %d: train loss %.4f, val mDice %.4f (best %.4f at epoch %d)",
                     epoch, train_loss, score, extra["best_val_mDice"], extra["best_epoch"])
        if stop_early():
            if session.is_main:
                log.info("early stop: no val improvement for %d epochs", cfg.early_stop_patience)
            session.should_stop = True
    if session.is_main:
        if not (run_dir / MODEL_FILE).is_file():
            raise PolypsslError(f"{run_dir / MODEL_FILE} is missing although validation ran; delete {run_dir} and rerun")
        write_json(run_dir / RUN_INFO_FILE, run_info(
            cfg, best_val_mDice=extra["best_val_mDice"], best_epoch=extra["best_epoch"],
            epochs_run=extra["epochs_run"], steps=session.step, world_size=session.world_size,
        ))
    session.finish(best_val_mDice=extra["best_val_mDice"], best_epoch=extra["best_epoch"])
    return run_dir


# ---------------------------------------------------------------------------------------------- loading


def load_segmenter(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The best-validation segmenter of a finished run (in eval mode) and its ``run.json``."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    info_path, model_path = run_dir / RUN_INFO_FILE, run_dir / MODEL_FILE
    if not info_path.is_file() or not model_path.is_file():
        missing = info_path if not info_path.is_file() else model_path
        state = "is still running or was interrupted" if (run_dir / "provenance.json").is_file() else "is not a fine-tuning run"
        raise PolypsslError(
            f"{missing} not found: {run_dir} {state}. Finish it with `polypssl finetune {run_dir}/config.yaml` "
            "(it resumes) or point at a complete fine-tuning run"
        )
    if not is_complete(run_dir):
        raise PolypsslError(
            f"{run_dir} is not complete (provenance.json status is not 'complete'); finish it with "
            f"`polypssl finetune {run_dir}/config.yaml` (it resumes from the last checkpoint)"
        )
    info = read_json(info_path)
    missing_keys = [k for k in ("encoder", "image_size") if k not in info]
    if missing_keys:
        raise PolypsslError(f"{info_path} lacks {', '.join(missing_keys)}; it was not written by `polypssl finetune`")
    model = build_segmenter(info["encoder"], "random", int(info["image_size"]))
    try:
        model.load_state_dict(load_file(str(model_path)), strict=True)
    except RuntimeError as err:
        raise PolypsslError(f"{model_path} does not fit encoder {info['encoder']} at {info['image_size']} px: {err}") from err
    model.weights = info.get("weights", "random")
    return model.eval(), info


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="YAML file or preset name (deeplabv3plus_resnet50, dpt_vit_b16, tiny)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. weights=supervised loop.run_dir=runs/x")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(FinetuneConfig, resolve_config_path(args.config, "finetune"), args.overrides)
    run_dir = finetune(cfg)
    info_path = run_dir / RUN_INFO_FILE
    if info_path.is_file():
        info = read_json(info_path)
        value = info.get("best_val_mDice")
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
        print(f"{run_dir}: best val mDice {shown} at epoch {info.get('best_epoch')}")
    return 0


__all__ = ["FinetuneConfig", "FinetuneDataConfig", "add_arguments", "finetune", "load_segmenter", "run", "validate"]

"""The one training-loop utility both training stages share.

A stage writes its own plain loop (DINOv2 / accelerate-examples style) and lets
:class:`TrainingSession` do the bookkeeping every run needs and nobody wants to write twice:

* an :class:`accelerate.Accelerator` set up from :class:`LoopConfig` (mixed precision, gradient
  accumulation, trackers), seeded;
* the run directory (resolved config, provenance, ``metrics.jsonl``);
* checkpoints every N optimiser steps into ``checkpoints/step-XXXXXXXX`` (written under a
  temporary name, then renamed; the last K kept) holding the full Accelerate state (models,
  optimisers, scalers, schedulers, RNG) plus the loop position, and ``resume=auto``;
* a progress bar with throughput on the main process;
* a guard that stops on a non-finite loss with one clear error, keeping the last good checkpoint.

Usage::

    session = TrainingSession(cfg, cfg.loop, stage="pretrain")
    model, opt, loader, sched = session.prepare(model, opt, loader, sched)
    session.resume()
    for epoch in session.epochs(cfg.epochs):
        for batch in session.batches(loader):
            with session.accelerator.accumulate(model):
                loss = ...
                session.check_finite(loss)
                session.accelerator.backward(loss)
                opt.step(); sched.step(); opt.zero_grad()
            if session.accelerator.sync_gradients:
                session.step_done({"loss": loss.item()}, images=batch_size)
            if session.should_stop:
                break
        session.epoch_done({"val_mDice": ...})
    session.finish()
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polypssl.config import config_to_dict
from polypssl.data.sampling import sample_seed
from polypssl.errors import PolypsslError
from polypssl.runs import append_jsonl, finish_run_dir, init_run_dir, write_json

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
#: Mixed into the run seed for the per-batch reseeding in ``TrainingSession.batches``.
STEP_STREAM = 0x5EED
LOOP_STATE = "loop.json"


@dataclass
class LoopConfig:
    """Settings every training run shares (the ``loop`` section of a stage config)."""

    run_dir: str = "runs/default"
    seed: int = 42
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_accumulation_steps: int = 1
    tracker: str = "none"  # none | wandb | tensorboard
    project: str = "polypssl"  # W&B project / TensorBoard sub-folder
    run_name: str | None = None
    checkpoint_every: int = 500  # optimiser steps; 0 = only at epoch ends and at the end
    keep_last: int = 2
    resume: str = "auto"  # auto | never | path to a checkpoints/step-* folder
    log_every: int = 10  # optimiser steps between metric lines
    num_workers: int = 4
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs, benchmarks)
    progress: bool = True
    tags: list[str] = field(default_factory=list)


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint next to the Accelerate state."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    images_seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # stage state (best score, patience ...)


def normalise_precision(value: Any) -> str:
    """``no``/``fp16``/``bf16``; YAML reads a bare ``no`` as false, so accept that spelling too."""
    text = str(value).strip().lower()
    if text in ("no", "false", "none", "fp32", "0"):
        return "no"
    if text in ("fp16", "bf16"):
        return text
    raise PolypsslError(f"loop.mixed_precision must be no, fp16 or bf16, got '{value}'")


def per_process_batch(batch_size: int, world_size: int, accumulation: int = 1) -> int:
    """Images each process loads per forward pass; the global batch must split evenly."""
    parts = world_size * accumulation
    if batch_size < 1 or batch_size % parts:
        raise PolypsslError(
            f"batch_size={batch_size} (the global batch) must be a positive multiple of "
            f"processes ({world_size}) x loop.gradient_accumulation_steps ({accumulation}) = {parts}; "
            f"change batch_size or loop.gradient_accumulation_steps"
        )
    return batch_size // parts


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loop.seed": 42, ...}``: TensorBoard's hparams accept only flat int/float/str/bool values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class NonFiniteLossError(PolypsslError):
    """Raised when the loss is NaN or infinite."""


def _tracker_init_kwargs(loop: LoopConfig, run_dir: Path) -> dict[str, Any]:
    if loop.tracker == "wandb":
        wandb_kwargs: dict[str, Any] = {"dir": str(run_dir), "tags": list(loop.tags)}
        if loop.run_name:
            wandb_kwargs["name"] = loop.run_name
        # Offline when there are no credentials: the run is synced later with `wandb sync`.
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            netrc = Path.home() / ".netrc"
            if not (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")):
                wandb_kwargs["mode"] = "offline"
                log.info("W&B: not logged in, logging offline under %s (sync later with `wandb sync`)", run_dir)
        return {"wandb": wandb_kwargs}
    return {}


class TrainingSession:
    """Accelerator, run directory, checkpoints, resume, logging and progress for one run."""

    def __init__(self, cfg: Any, loop: LoopConfig, stage: str, **provenance_extra: Any) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        if loop.tracker not in ("none", "wandb", "tensorboard"):
            raise PolypsslError(f"loop.tracker must be none, wandb or tensorboard, got '{loop.tracker}'")
        loop.mixed_precision = normalise_precision(loop.mixed_precision)
        self.cfg = cfg
        self.loop = loop
        self.stage = stage
        self.run_dir = Path(loop.run_dir)
        self.accelerator = Accelerator(
            mixed_precision=loop.mixed_precision,
            gradient_accumulation_steps=loop.gradient_accumulation_steps,
            log_with=None if loop.tracker == "none" else loop.tracker,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
            # Our EpochSampler is already deterministic; keep Accelerate from replacing it.
            dataloader_config=DataLoaderConfiguration(
                use_seedable_sampler=False, non_blocking=torch.cuda.is_available()
            ),
            # Schedulers are stepped once per optimiser step by the stage, not once per process.
            step_scheduler_with_optimizer=False,
        )
        set_seed(loop.seed)
        self.state = LoopState()
        self.should_stop = False
        self._last_log_time = time.perf_counter()
        self._images_since_log = 0
        self._progress: Any = None
        if self.is_main:
            init_run_dir(self.run_dir, cfg, self.world_size, stage=stage, **provenance_extra)
        self.accelerator.wait_for_everyone()
        if loop.tracker != "none":
            config = config_to_dict(cfg)
            self.accelerator.init_trackers(
                loop.project if loop.tracker == "wandb" else stage,
                config=config if loop.tracker == "wandb" else flat_hparams(config),
                init_kwargs=_tracker_init_kwargs(loop, self.run_dir),
            )

    # -- basic facts -------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def step(self) -> int:
        return self.state.step

    def prepare(self, *objects: Any) -> Any:
        return self.accelerator.prepare(*objects)

    def register(self, *objects: Any) -> None:
        """Save and restore extra objects with ``state_dict``/``load_state_dict`` in checkpoints."""
        self.accelerator.register_for_checkpointing(*objects)

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a folder without ``loop.json`` is incomplete)."""
        if not self.checkpoint_root.is_dir():
            return []
        found = [p for p in self.checkpoint_root.glob("step-*") if (p / LOOP_STATE).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def save_checkpoint(self) -> Path:
        """Write the full state to ``checkpoints/step-N`` atomically and prune old ones."""
        final = self.checkpoint_root / f"step-{self.state.step:08d}"
        tmp = self.checkpoint_root / f".tmp-step-{self.state.step:08d}"
        self.accelerator.wait_for_everyone()
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.is_main:
            write_json(tmp / LOOP_STATE, self.state.__dict__)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.checkpoints()[: -max(self.loop.keep_last, 1)]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint %s", final)
        self.accelerator.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Restore the latest checkpoint when ``loop.resume`` allows it; True if one was loaded."""
        mode = self.loop.resume
        if mode == "never":
            return False
        if mode == "auto":
            found = self.checkpoints()
            if not found:
                return False
            path = found[-1]
        else:
            path = Path(mode)
            if not (path / LOOP_STATE).is_file():
                raise PolypsslError(
                    f"loop.resume={mode}: not a complete checkpoint folder (no {LOOP_STATE}); "
                    f"use resume=auto or one of {self.checkpoint_root}/step-*"
                )
        self.accelerator.load_state(str(path))
        saved = json.loads((path / LOOP_STATE).read_text())
        self.state = LoopState(**saved)
        if self.is_main:
            log.info("resumed from %s (step %d, epoch %d)", path, self.state.step, self.state.epoch)
        return True

    # -- iteration -----------------------------------------------------------------------------
    def epochs(self, num_epochs: int) -> Iterator[int]:
        """Epoch numbers from where the run stands to ``num_epochs - 1``."""
        while self.state.epoch < num_epochs and not self.should_stop:
            yield self.state.epoch
            if self.should_stop:
                break
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def batches(self, loader: Any, desc: str | None = None) -> Iterator[Any]:
        """Iterate ``loader`` for the current epoch, skipping batches consumed before a resume.

        The global torch RNG is reseeded before each batch (see below).
        """
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.state.epoch)
        skip = self.state.batch_in_epoch
        iterable: Iterable[Any] = self.accelerator.skip_first_batches(loader, skip) if skip else loader
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = self._bar(total, skip, desc or f"{self.stage} epoch {self.state.epoch}")
        try:
            for batch in iterable:
                self.state.batch_in_epoch += 1
                # Model-side randomness (dropout, MAE masks) draws from the global RNG, which
                # DataLoader iterators also consume at moments that differ after a resume; seeding it
                # per (epoch, batch, rank) keeps a resumed run identical to an uninterrupted one.
                torch.manual_seed(sample_seed(
                    self.loop.seed ^ STEP_STREAM, self.state.epoch,
                    self.state.batch_in_epoch * self.world_size + self.accelerator.process_index,
                ))
                yield batch
                if bar is not None:
                    bar.update(1)
                if self.should_stop:
                    break
        finally:
            if bar is not None:
                bar.close()
            self._progress = None

    def _bar(self, total: int | None, initial: int, desc: str) -> Any:
        if not (self.loop.progress and self.is_main):
            return None
        from tqdm.auto import tqdm

        self._progress = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)
        return self._progress

    # -- per step ------------------------------------------------------------------------------
    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop with a clear error on a NaN/inf loss; the last checkpoint on disk stays intact."""
        if not torch.isfinite(loss.detach()).all():
            last = self.checkpoints()
            where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"non-finite loss ({loss.detach().float().item()}) at step {self.state.step} of run "
                f"{self.run_dir}; {where}. Lower the learning rate, use mixed_precision=bf16 instead of fp16, "
                f"or check the data, then rerun with loop.resume=auto."
            )

    def step_done(self, metrics: dict[str, float], images: int = 0) -> None:
        """Count one optimiser step; log every ``log_every`` steps and checkpoint every N."""
        self.state.step += 1
        # The number of images this step consumed across all processes.
        global_images = images * self.world_size
        self.state.images_seen += global_images
        self._images_since_log += global_images
        if self._progress is not None:
            self._progress.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
        if self.state.step % max(self.loop.log_every, 1) == 0:
            elapsed = max(time.perf_counter() - self._last_log_time, 1e-9)
            record = {"step": self.state.step, "epoch": self.state.epoch, **metrics}
            if self._images_since_log:
                record["images_per_s"] = self._images_since_log / elapsed
            self.log(record)
            self._last_log_time = time.perf_counter()
            self._images_since_log = 0
        if self.loop.checkpoint_every and self.state.step % self.loop.checkpoint_every == 0:
            self.save_checkpoint()
        if self.loop.max_steps is not None and self.state.step >= self.loop.max_steps:
            self.should_stop = True

    def epoch_done(self, metrics: dict[str, float] | None = None) -> None:
        """Log end-of-epoch metrics (validation scores, ...) and checkpoint."""
        if metrics:
            self.log({"step": self.state.step, "epoch": self.state.epoch, **metrics})
        # The checkpoint records the next epoch as current, so a resume starts there.
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        try:
            self.save_checkpoint()
        finally:
            self.state.epoch -= 1
            self.state.batch_in_epoch = 0
        # `epochs()` advances the epoch counter itself.

    def log(self, record: dict[str, Any]) -> None:
        """Append to ``metrics.jsonl`` and send to the tracker (main process only)."""
        clean = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
        if self.is_main:
            append_jsonl(self.run_dir / "metrics.jsonl", clean)
        if self.loop.tracker != "none":
            numeric = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            self.accelerator.log(numeric, step=self.state.step)

    def finish(self, status: str = "complete", **extra: Any) -> None:
        """End trackers and mark the run ``complete`` (or ``failed``) in provenance.json."""
        self.accelerator.wait_for_everyone()
        if self.loop.tracker != "none":
            self.accelerator.end_training()
        if self.is_main:
            finish_run_dir(self.run_dir, status=status, steps=self.state.step, images_seen=self.state.images_seen, **extra)

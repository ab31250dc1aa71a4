"""The pretraining loop: run directory, export, config errors, exact resume, presets, 2 processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polypssl.cli import main
from polypssl.config import load_config
from polypssl.errors import PolypsslError
from polypssl.pretrain.loop import (
    PretrainConfig,
    learning_rate,
    load,
    per_process_batch,
    pretrain,
    schedule_steps,
)
from polypssl.pretrain.optim import warmup_cosine
from polypssl.runs import is_complete, read_json, read_jsonl
from polypssl.training import NonFiniteLossError

REPO = Path(__file__).resolve().parent.parent

#: tiny heads, so a step of each method takes milliseconds on CPU
TINY = {
    "mocov3": ("resnet18", ["mocov3.dim=16", "mocov3.mlp_dim=32"]),
    "barlowtwins": ("resnet18", ["barlowtwins.projector=[32,32]"]),
    "mae": ("vit_tiny16", ["mae.decoder_dim=32", "mae.decoder_depth=1", "mae.decoder_heads=2"]),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of 24 small random JPEGs of mixed sizes (an unlabelled ``folder`` dataset)."""
    folder = tmp_path_factory.mktemp("unlabelled")
    rng = np.random.default_rng(0)
    for i in range(24):
        h, w = 40 + i % 3 * 8, 48 + i % 2 * 16
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")
    return folder


def tiny_overrides(run_dir: Path, images: Path, method: str = "mocov3", **extra: object) -> list[str]:
    encoder, heads = TINY[method]
    keys = {
        "method": method, "encoder": encoder, "image_size": 32, "epochs": 2, "batch_size": 8,
        "data.name": "folder", "data.root": str(images), "data.max_images": 16,
        "optim.warmup_epochs": 1, "loop.run_dir": str(run_dir), "loop.progress": "false",
        "loop.num_workers": 0, "loop.tracker": "none",
        "loop.log_every": 1, "loop.checkpoint_every": 3,
    }
    keys.update(extra)
    return [f"{k}={v}" for k, v in keys.items()] + heads


def tiny_config(run_dir: Path, images: Path, method: str = "mocov3", **extra: object) -> PretrainConfig:
    return load("tiny_mocov3", tiny_overrides(run_dir, images, method, **extra))


# ----------------------------------------------------------------------------- pure pieces


def test_global_batch_is_split_over_processes_and_accumulation():
    assert per_process_batch(4096, 8, 2) == 256
    with pytest.raises(PolypsslError, match=r"batch_size=100 .*loop.gradient_accumulation_steps \(3\)"):
        per_process_batch(100, 1, 3)


def test_schedule_covers_the_run_and_max_steps_shortens_it_keeping_its_shape():
    cfg = load("mocov3_resnet50")
    assert schedule_steps(cfg, 24) == (2400, 240)  # 100 epochs, 10 of warm-up
    cfg.loop.max_steps = 50
    assert schedule_steps(cfg, 24) == (50, 5)


# docs/protocol.md section 6: optimiser, lr per 256 images, weight decay, epochs, warm-up, global batch
RECIPES = {
    "mocov3_resnet50": ("lars", 0.6, 1e-6, 100, 10, 4096),
    "mocov3_vit_b16": ("adamw", 1.5e-4, 0.1, 300, 40, 4096),
    "barlowtwins_resnet50": ("lars", 0.2, 1e-6, 1000, 10, 2048),
    "mae_vit_b16": ("adamw", 1.5e-4, 0.05, 800, 40, 4096),
}


@pytest.mark.parametrize("preset", sorted(RECIPES))
def test_presets_hold_the_official_recipes(preset):
    cfg = load(preset)
    name, base_lr, wd, epochs, warmup, batch = RECIPES[preset]
    assert (cfg.optim.name, cfg.optim.base_lr, cfg.optim.weight_decay) == (name, base_lr, wd)
    assert (cfg.epochs, cfg.optim.warmup_epochs, cfg.batch_size) == (epochs, warmup, batch)
    assert learning_rate(cfg) == pytest.approx(base_lr * batch / 256)
    assert cfg.data.name == "hyperkvasir-unlabelled"
    if preset == "barlowtwins_resnet50":
        assert cfg.optim.bias_base_lr == 0.0048 and cfg.barlowtwins.lambd == 0.0051
    if preset == "mae_vit_b16":
        assert list(cfg.optim.betas) == [0.9, 0.95] and cfg.mae.mask_ratio == 0.75


# ----------------------------------------------------------------------------- the CLI end to end


@pytest.mark.parametrize("method", ["mocov3", "barlowtwins", "mae"])
def test_each_method_trains_and_writes_a_complete_run_directory(tmp_path, images, method):
    from safetensors.torch import load_file

    from polypssl.backbones import create_backbone

    run = tmp_path / "run"
    assert main(["pretrain", "tiny_mocov3", *tiny_overrides(run, images, method, **{"loop.max_steps": 3})]) == 0

    assert is_complete(run)
    cfg = load_config(PretrainConfig, run / "config.yaml")  # the resolved config loads again
    assert (cfg.method, cfg.loop.max_steps) == (method, 3)
    assert read_json(run / "provenance.json")["world_size"] == 1
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in rows)
    # one scheduler step per optimiser step: 3 steps, 1 of warm-up (2 epochs of 2 steps, cut to 3)
    peak = 0.6 * 8 / 256  # tiny preset: base_lr 0.6 per 256 images, batch 8
    assert [r["lr"] for r in rows] == pytest.approx([peak * warmup_cosine(s, 2, 3) for s in (1, 2, 3)])
    if method == "mocov3":
        assert rows[-1]["momentum"] == pytest.approx(1.0)  # the cosine schedule ends at 1
    assert (run / "checkpoints" / "step-00000003" / "loop.json").is_file()

    weights = run / "backbone.safetensors"
    encoder = TINY[method][0]
    backbone = create_backbone(encoder, weights=f"file:{weights}", image_size=32)
    saved = load_file(weights)
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)


def test_a_complete_run_invoked_again_does_nothing_and_says_so(tmp_path, images, capsys):
    run = tmp_path / "run"
    args = ["pretrain", "tiny_mocov3", *tiny_overrides(run, images, **{"loop.max_steps": 1})]
    assert main(args) == 0
    before = (run / "backbone.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out
    assert (run / "backbone.safetensors").stat().st_mtime_ns == before


def test_an_unknown_key_fails_naming_the_key(tmp_path, images, capsys):
    assert main(["pretrain", "tiny_mocov3", *tiny_overrides(tmp_path, images), "optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "optim.lr" in err
    assert not (tmp_path / "provenance.json").exists()


def test_a_global_batch_that_does_not_split_fails_naming_the_keys(tmp_path, images, capsys):
    args = tiny_overrides(tmp_path / "run", images, **{"loop.gradient_accumulation_steps": 3})
    assert main(["pretrain", "tiny_mocov3", *args]) == 2
    assert "batch_size=8" in capsys.readouterr().err


class Killed(Exception):
    """Stands in for a preemption: raised from the step hook, after a checkpoint was written."""


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        # momentum encoder + BatchNorm + LARS; 3 steps per epoch, checkpoints at 3 (epoch end) and 4
        ("mocov3", {"batch_size": 4, "data.max_images": 12, "loop.checkpoint_every": 4}),
        # random masks + AdamW + gradient accumulation (3 steps per epoch, same checkpoints)
        ("mae", {"batch_size": 8, "loop.gradient_accumulation_steps": 2, "data.max_images": 24,
                 "loop.checkpoint_every": 4}),
    ],
)
def test_a_killed_run_resumed_with_auto_ends_with_the_same_weights(tmp_path, images, method, extra):
    from safetensors.torch import load_file

    reference = pretrain(tiny_config(tmp_path / "a", images, method, **extra))

    kill_at = 5  # mid-epoch 1, one step after the last checkpoint

    def kill_after_checkpoint(session):
        if session.step == kill_at:
            raise Killed

    cfg = tiny_config(tmp_path / "b", images, method, **extra)
    with pytest.raises(Killed):
        pretrain(cfg, on_step=kill_after_checkpoint)
    assert not is_complete(tmp_path / "b") and not (tmp_path / "b" / "backbone.safetensors").exists()
    resumed = pretrain(tiny_config(tmp_path / "b", images, method, **extra, **{"loop.resume": "auto"}))

    assert read_json(resumed / "provenance.json")["resumed"]
    a, b = load_file(reference / "backbone.safetensors"), load_file(resumed / "backbone.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    steps = [r["step"] for r in read_jsonl(resumed / "metrics.jsonl") if "loss" in r]
    assert steps[-1] == 6


def test_a_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    tmp_path, images, monkeypatch
):
    from polypssl.pretrain.mocov3 import MoCoV3

    calls = {"n": 0}
    real = MoCoV3.forward

    def poisoned(self, batch):
        calls["n"] += 1
        loss = real(self, batch)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(MoCoV3, "forward", poisoned)
    # 2 steps per epoch, checkpoints at epoch ends; NaN at step 5, seen at the next sync (step 6)
    cfg = tiny_config(tmp_path / "run", images, epochs=4, **{"loop.log_every": 2, "loop.checkpoint_every": 0})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .*step-00000004"):
        pretrain(cfg)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert not is_complete(run) and not (run / "backbone.safetensors").exists()


# ----------------------------------------------------------------------------- slow: real sizes, 2 processes


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(RECIPES))
def test_each_preset_real_architecture_takes_a_step_at_224(tmp_path, images, preset):
    from polypssl.backbones import create_backbone

    run = tmp_path / "run"
    args = [
        "data.name=folder", f"data.root={images}", "data.max_images=2", "batch_size=2",
        "loop.max_steps=1", f"loop.run_dir={run}", "loop.progress=false", "loop.num_workers=0",
        "loop.tracker=none", "loop.mixed_precision='no'", "loop.checkpoint_every=0",
    ]
    assert main(["pretrain", preset, *args]) == 0
    cfg = load(preset)
    assert read_jsonl(run / "metrics.jsonl")[0]["step"] == 1
    create_backbone(cfg.encoder, weights=f"file:{run / 'backbone.safetensors'}", image_size=224)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_run_matches_one_process_on_the_same_global_batch(tmp_path, images):
    """``accelerate launch`` with 2 CPU processes: same data order, lr schedule and global-batch
    statistics, so MoCo v3 ends where one process on the whole batch ends."""
    from safetensors.torch import load_file

    extra = {"loop.max_steps": 3, "loop.checkpoint_every": 2}
    one = pretrain(tiny_config(tmp_path / "one", images, **extra))
    two = tmp_path / "two"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port", str(_free_port()),
        "-m", "polypssl.pretrain", "tiny_mocov3", *tiny_overrides(two, images, **extra),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    assert is_complete(two) and read_json(two / "provenance.json")["world_size"] == 2
    rows = [r for r in read_jsonl(two / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["images_per_s"] > 0
    ref_rows = [r for r in read_jsonl(one / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], rel=1e-4)
    a, b = load_file(one / "backbone.safetensors"), load_file(two / "backbone.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)

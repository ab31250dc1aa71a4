"""Fine-tuning end to end: the study's two real segmenters and a 2-process CPU run."""

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

from polypssl.finetune import build_segmenter
from polypssl.finetune.segmenters import decoder_parameters
from polypssl.runs import is_complete, read_json, read_jsonl

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("encoder,decoder", [("resnet50", "deeplabv3plus"), ("vit_b16", "dpt")])
def test_the_study_segmenters_give_one_logit_per_pixel_at_224(encoder, decoder):
    model = build_segmenter(encoder, "random", 224).eval()
    assert model.decoder_name == decoder
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1, 224, 224)
    if decoder == "dpt":
        assert decoder_parameters(model) == 20_328_641  # docs/protocol.md section 8: the study's DPT decoder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_cpu_run_scores_every_val_image_once(tmp_path):
    from polypssl.data.synth import render_frame

    # 30 frames: 24 train / 3 val; 3 val images over 2 processes forces a padded last batch
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / "Kvasir-SEG" / sub).mkdir(parents=True)
    for i in range(30):
        img, mask = render_frame(0, "kvasir-seg", i, "small")
        img.save(root / "Kvasir-SEG" / "images" / f"f{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "Kvasir-SEG" / "masks" / f"f{i:03d}.png")
    run_dir = tmp_path / "run"
    # `accelerate launch --cpu --num_processes 2` starts one process unless mpirun is set up; the
    # multi-process launcher with ACCELERATE_USE_CPU starts two (configs/accelerate/cpu_2proc.yaml)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port", str(_free_port()), "-m", "polypssl.finetune", "tiny",
        f"data.root={root}", f"loop.run_dir={run_dir}", "epochs=2", "image_size=32", "batch_size=8",
        "val_batch_size=1", "loop.progress=false",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert is_complete(run_dir)
    assert read_json(run_dir / "provenance.json")["world_size"] == 2
    info = read_json(run_dir / "run.json")
    assert info["world_size"] == 2 and info["epochs_run"] == 2
    val_rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_mDice" in r]
    assert [r["val_n"] for r in val_rows] == [3, 3]
    # global batch 8 over 2 processes: 3 optimiser steps per epoch of 24 images
    assert info["steps"] == 6

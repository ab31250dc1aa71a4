"""Data-parallel helpers, and multi-process runs that must equal one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from polypssl.distributed import (
    GlobalBatchNorm,
    convert_sync_batchnorm,
    gather_no_grad,
    gather_with_grad,
    rank,
    world_size,
)

SCRIPT = Path(__file__).with_name("pretrain_dist_script.py")
REPO = Path(__file__).resolve().parent.parent


def test_single_process_helpers_are_identities():
    assert world_size() == 1 and rank() == 0
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
    g = gather_no_grad(x)
    assert not g.requires_grad and torch.equal(g, x)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert convert_sync_batchnorm(model, "cpu") is model
    assert isinstance(model[1], nn.BatchNorm2d)


@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3, 3)])
def test_global_batchnorm_matches_batchnorm_in_one_process(shape):
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5) if len(shape) == 2 else nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    ref = type(bn)(5)
    ref.load_state_dict(bn.state_dict())
    gbn = GlobalBatchNorm.convert(bn)
    assert isinstance(gbn, GlobalBatchNorm) and gbn.weight is bn.weight  # parameters are shared
    assert list(gbn.state_dict()) == list(ref.state_dict())  # torchvision key names kept
    x = torch.randn(shape) * 3 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(shape)
    (gbn(xa) * w).sum().backward()
    (ref(xb) * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gbn.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(gbn, name), getattr(ref, name))
    gbn.eval()
    ref.eval()
    torch.testing.assert_close(gbn(x), ref(x))


def test_global_batchnorm_convert_reaches_nested_modules():
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.BatchNorm1d(4, affine=False))
    converted = GlobalBatchNorm.convert(model)
    assert isinstance(converted[0][1], GlobalBatchNorm) and isinstance(converted[1], GlobalBatchNorm)
    assert not converted[1].affine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_for_mocov3_and_barlow_twins(tmp_path):
    """Loss and gradients of 2 CPU processes (GlobalBatchNorm, gathered keys / embeddings) equal 1 process.

    ``accelerate launch --cpu`` starts a single process unless mpirun is configured, so the two
    processes come from the torchrun launcher (``--multi_gpu``) with ``ACCELERATE_USE_CPU=1``.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONWARNINGS": "ignore"}
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(SCRIPT), str(two),
    ]
    procs = [
        subprocess.Popen([sys.executable, str(SCRIPT), str(one)], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen(launch, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    for method in ("mocov3", "barlowtwins"):
        ref, dist = torch.load(one / f"{method}.pt"), torch.load(two / f"{method}.pt")
        assert dist["loss"] == pytest.approx(ref["loss"], rel=1e-5), method
        for step, (g_ref, g_dist) in enumerate(zip(ref["grads"], dist["grads"])):
            for name, grad in g_ref.items():
                scale = grad.abs().max().item()
                assert scale > 0, f"{method} step {step}: {name} has no gradient to compare"
                err = (g_dist[name] - grad).abs().max().item()
                assert err <= 1e-3 * scale, f"{method} step {step} {name}: max error {err:.2e} vs scale {scale:.2e}"
        torch.testing.assert_close(dist["running_mean"], ref["running_mean"], rtol=1e-4, atol=1e-6)

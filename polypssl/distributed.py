"""Small data-parallel helpers shared by the training stages.

Accelerate covers launching and gradient averaging, but two things the self-supervised losses
and the CNN encoders need are not in it:

* an all-gather that carries gradients (``accelerator.gather`` does not), for losses whose
  statistics span the global batch (Barlow Twins), next to a plain gather without gradient
  (MoCo v3 keys);
* batch statistics over the global batch on every device. ``torch.nn.SyncBatchNorm`` does that
  on accelerators but raises "SyncBatchNorm expected input tensor to be on GPU" on CPU, so
  CPU multi-process runs (tests, CI) get :class:`GlobalBatchNorm`, a small stand-in built on
  the autograd-aware all-reduce.

Every function is a no-op (or the identity) in a single process.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

# torch 2.10+ flags these autograd collectives as deprecated in favour of a private module;
# they remain the public, documented autograd-aware collectives.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_", category=FutureWarning)


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenates ``x`` from all processes along dim 0 (rank order); no gradient flows back.

    All processes must pass tensors of the same shape.
    """
    if not is_distributed():
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenates ``x`` from all processes along dim 0, differentiably.

    The backward pass sums, over processes, the gradients that reach each process's slice. So
    when every process computes the same global loss from the gathered tensor and DDP then
    averages the parameter gradients, each parameter gets exactly the gradient of that global
    loss, as in one process on the whole batch.
    """
    if not is_distributed():
        return x
    return torch.cat(dist_fn.all_gather(x.contiguous()), dim=0)


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """Sum of ``x`` over processes; the gradient is summed over processes too."""
    if not is_distributed():
        return x
    return dist_fn.all_reduce(x, op=dist.ReduceOp.SUM)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch, on any device.

    Hand-written because ``torch.nn.SyncBatchNorm`` only runs on accelerators. It all-reduces
    per-channel sums, sums of squares and counts with autograd, so gradients flow through the
    global mean and variance exactly as in one process on the whole batch. Parameters and
    buffers keep BatchNorm's names, so state dicts stay torchvision-compatible. Works for 2-d
    (N, C) and 4-d (N, C, H, W) inputs.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D-5D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], device=x.device, dtype=torch.float32)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = all_reduce_with_grad(stats)
        c = self.num_features
        total = stats[2 * c]
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp_min(0)  # biased, as BatchNorm normalises
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                )
                unbiased = var * (total / (total - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replaces every BatchNorm (1d/2d/3d, not already converted) in ``module``, sharing parameters."""
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, (cls, nn.SyncBatchNorm)):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, cls.convert(child))
        return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Makes every BatchNorm in ``model`` use global-batch statistics; call before ``prepare``.

    Accelerators with more than one process get ``torch.nn.SyncBatchNorm``; CPU processes get
    :class:`GlobalBatchNorm`; a single process keeps the model unchanged.
    """
    if world_size() <= 1:
        return model
    if torch.device(device).type == "cpu":
        return GlobalBatchNorm.convert(model)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)

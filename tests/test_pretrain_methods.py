"""The self-supervised methods, their augmentations and optimisers (single process, CPU)."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest
import torch
from lightly.models.utils import patchify
from PIL import Image
from torch import nn

from polypssl.errors import PolypsslError
from polypssl.pretrain import (
    MAE,
    BarlowTwins,
    BarlowTwinsConfig,
    MAEConfig,
    MoCoV3,
    MoCoV3Config,
    barlow_twins_loss,
    build_optimizer,
    build_scheduler,
    build_views,
    mae_loss,
    mocov3_loss,
    momentum_at,
)
from polypssl.pretrain.views import PILGaussianBlur

SIZE = 32
TINY_MOCO = MoCoV3Config(mlp_dim=64, dim=32)
TINY_BT = BarlowTwinsConfig(projector=[64, 64, 64])
TINY_MAE = MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2)


def fixed_views(batch: int = 8, size: int = SIZE) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    return [x, x.flip(-1) + 0.3 * torch.randn(x.shape, generator=gen)]


# ---------------------------------------------------------------- MoCo v3 loss and momentum


def test_mocov3_loss_equals_direct_formula():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 16, generator=gen) * 3, torch.randn(6, 16, generator=gen)
    tau = 0.2
    qn, kn = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
    logits = qn @ kn.T / tau
    # -log softmax of the positive (the diagonal), averaged over queries, times 2 tau
    direct = 2 * tau * -(logits.diag() - logits.exp().sum(dim=1).log()).mean()
    torch.testing.assert_close(mocov3_loss(q, k, tau), direct)


def test_mocov3_loss_normalises_inside_and_sends_no_gradient_to_keys():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(4, 8, generator=gen, requires_grad=True)
    k = torch.randn(4, 8, generator=gen, requires_grad=True)
    loss = mocov3_loss(q, k, 1.0)
    assert loss.item() == pytest.approx(mocov3_loss(5 * q, k / 7, 1.0).item(), rel=1e-6)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


def test_momentum_follows_cosine_schedule():
    assert momentum_at(0.0, 0.99) == pytest.approx(0.99)
    assert momentum_at(0.5, 0.99) == pytest.approx(0.995)
    assert momentum_at(1.0, 0.99) == pytest.approx(1.0)
    assert momentum_at(0.25, 0.99) == pytest.approx(1 - 0.5 * (1 + math.cos(math.pi / 4)) * 0.01)


def test_after_optimizer_step_moves_momentum_encoder_by_ema():
    torch.manual_seed(0)
    model = MoCoV3("resnet18", SIZE, TINY_MOCO)
    online, target = model.projector[0].weight, model.momentum_projector[0].weight
    torch.testing.assert_close(online, target)  # starts as a copy
    before = target.detach().clone()
    with torch.no_grad():
        online.add_(1.0)
    model.after_optimizer_step(0.5)
    m = momentum_at(0.5, 0.99)
    assert model.current_momentum == pytest.approx(m)
    torch.testing.assert_close(target, m * before + (1 - m) * online.detach())
    assert not target.requires_grad


def test_mocov3_heads_follow_the_release():
    torch.manual_seed(0)
    rn = MoCoV3("resnet18", SIZE, MoCoV3Config(mlp_dim=64, dim=32))
    assert rn.temperature == 1.0
    assert sum(isinstance(m, nn.Linear) for m in rn.projector) == 2
    assert isinstance(rn.projector[-1], nn.BatchNorm1d) and not rn.projector[-1].affine
    assert not isinstance(rn.predictor[-1], nn.BatchNorm1d)  # ResNet predictor: no last BN
    vit = MoCoV3("vit_tiny16", SIZE, MoCoV3Config(mlp_dim=64, dim=32))
    assert vit.temperature == 0.2
    assert sum(isinstance(m, nn.Linear) for m in vit.projector) == 3
    assert isinstance(vit.predictor[-1], nn.BatchNorm1d)
    # ViT: patch embedding frozen, position embedding fixed; neither reaches the optimiser
    assert not any(p.requires_grad for p in vit.backbone.patch_embed.parameters())
    assert not vit.backbone.pos_embed.requires_grad
    optimised = {id(p) for g in build_optimizer(vit, "adamw", 1e-3, 0.1).param_groups for p in g["params"]}
    assert id(vit.backbone.patch_embed.proj.weight) not in optimised
    assert not any(id(p) in optimised for p in vit.momentum_backbone.parameters())


# ---------------------------------------------------------------- each method learns


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: MoCoV3("resnet18", SIZE, TINY_MOCO), id="mocov3-resnet18"),
        pytest.param(lambda: MoCoV3("vit_tiny16", SIZE, TINY_MOCO), id="mocov3-vit_tiny16"),
        pytest.param(lambda: BarlowTwins("resnet18", SIZE, TINY_BT), id="barlowtwins-resnet18"),
        pytest.param(lambda: MAE("vit_tiny16", SIZE, TINY_MAE), id="mae-vit_tiny16"),
    ],
)
def test_loss_falls_on_a_fixed_batch(make):
    torch.manual_seed(0)
    model = make()
    batch = fixed_views()[0] if isinstance(model, MAE) else fixed_views()
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(3):
        torch.manual_seed(123)  # the same MAE mask every step
        loss = model(batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_optimizer_step((step + 1) / 3)
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------- Barlow Twins


def test_barlow_twins_loss_is_identity_target_of_batchnormed_correlation():
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 5, generator=gen), torch.randn(16, 5, generator=gen)
    bn = nn.BatchNorm1d(5, affine=False)  # what the release applies (train mode)
    c = bn(z1).T @ bn(z2) / 16
    off = c - torch.diag(torch.diagonal(c))
    expected = ((torch.diagonal(c) - 1) ** 2).sum() + 0.0051 * (off**2).sum()
    torch.testing.assert_close(barlow_twins_loss(z1, z2, 0.0051), expected)
    # identical, decorrelated embeddings reach the minimum
    assert barlow_twins_loss(z1, z1 * 3 + 1, 0.0).item() == pytest.approx(0.0, abs=1e-4)


def test_barlow_twins_projector_is_official_by_default():
    assert BarlowTwinsConfig().projector == [8192, 8192, 8192]
    assert BarlowTwinsConfig().lambd == 0.0051


# ---------------------------------------------------------------- MAE


def test_mae_masks_75_percent_and_keeps_the_class_token():
    torch.manual_seed(0)
    model = MAE("vit_tiny16", 64, TINY_MAE)  # 4x4 = 16 patches
    out = model.reconstruct(torch.randn(3, 3, 64, 64))
    assert out["idx_mask"].shape == (3, 12) and out["idx_keep"].shape == (3, 5)  # cls + 4 patches
    assert (out["idx_keep"][:, 0] == 0).all() and (out["idx_mask"] > 0).all()
    for keep, mask in zip(out["idx_keep"], out["idx_mask"]):
        assert sorted(keep.tolist() + mask.tolist()) == list(range(17))
    assert out["pred"].shape == out["target"].shape == (3, 12, 16 * 16 * 3)


def test_mae_loss_uses_per_patch_normalised_pixels():
    torch.manual_seed(0)
    model = MAE("vit_tiny16", SIZE, TINY_MAE)
    images = torch.randn(2, 3, SIZE, SIZE)
    torch.manual_seed(5)
    out = model.reconstruct(images)
    # targets are the masked patches of the input
    patches = patchify(images, 16)
    torch.testing.assert_close(out["target"], torch.stack([p[i - 1] for p, i in zip(patches, out["idx_mask"])]))
    t = out["target"]
    normed = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(mae_loss(out["pred"], t), ((out["pred"] - normed) ** 2).mean())
    torch.manual_seed(5)
    torch.testing.assert_close(model(images), ((out["pred"] - normed) ** 2).mean())
    # per-patch affine changes of the pixels do not change a norm-pix target
    torch.testing.assert_close(mae_loss(out["pred"], 4 * t + 2), mae_loss(out["pred"], t), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mae_loss(out["pred"], t, norm_pix_loss=False), mae_loss(out["pred"], t))


def test_mae_defaults_and_frozen_extras():
    cfg = MAEConfig()
    assert (cfg.mask_ratio, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.norm_pix_loss) == (
        0.75, 512, 8, 16, True)
    torch.manual_seed(0)
    model = MAE("vit_tiny16", SIZE, TINY_MAE)
    assert not model.backbone.pos_embed.requires_grad
    assert not model.encoder.mask_token.requires_grad
    assert model.backbone is model.encoder.vit
    # each tensor once in the state dict (safetensors checkpoints)
    assert not any(k.startswith("backbone.") for k in model.state_dict())


def test_mae_keeps_loaded_weights_and_initialises_random_ones(monkeypatch):
    import polypssl.pretrain.mae as mae_module

    torch.manual_seed(0)
    loaded = mae_module._create_backbone("vit_tiny16", "random", SIZE, sincos_pos_embed=True)
    with torch.no_grad():
        loaded.blocks[0].attn.qkv.weight.fill_(0.5)
    reference = {k: v.clone() for k, v in loaded.state_dict().items()}
    monkeypatch.setattr(mae_module, "_create_backbone", lambda *a, **k: loaded)
    model = MAE("vit_tiny16", SIZE, TINY_MAE, weights="file:encoder.safetensors")
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, reference[key], msg=key)
    # random weights get MAE's xavier initialisation, the position embedding stays as created
    model = MAE("vit_tiny16", SIZE, TINY_MAE, weights="random")
    assert not torch.allclose(model.backbone.blocks[0].attn.qkv.weight, reference["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(model.backbone.pos_embed, reference["pos_embed"])


# ---------------------------------------------------------------- views


def _image(seed: int = 0, size: int = 80) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size + 10, 3), dtype=np.uint8))


@pytest.mark.parametrize("method", ["mocov3", "barlowtwins"])
def test_two_view_methods_give_two_different_views_reproducibly(method):
    views = build_views(method, SIZE, encoder="resnet18")
    torch.manual_seed(3)
    random.seed(0)
    a = views(_image())
    torch.manual_seed(3)
    random.seed(99)  # python's RNG plays no part
    b = views(_image())
    assert isinstance(a, list) and len(a) == 2
    assert all(v.shape == (3, SIZE, SIZE) and v.dtype == torch.float32 for v in a)
    assert not torch.allclose(a[0], a[1])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    torch.manual_seed(4)
    assert not torch.allclose(views(_image())[0], a[0])


def test_two_views_are_asymmetric_as_in_byol():
    views = build_views("mocov3", SIZE, encoder="vit_b16")
    first, second = views.first.transforms, views.second.transforms

    def prob(transforms, kind):
        for t in transforms:
            inner = getattr(t, "transforms", [t])
            if any(isinstance(i, kind) for i in inner):
                return t.p
        return None

    import torchvision.transforms as T

    assert prob(first, PILGaussianBlur) == 1.0 and prob(second, PILGaussianBlur) == 0.1
    assert prob(first, T.RandomSolarize) == 0.0 and prob(second, T.RandomSolarize) == 0.2
    assert prob(first, T.ColorJitter) == 0.8 and prob(first, T.RandomGrayscale) == 0.2
    crop = next(t for t in first if isinstance(t, T.RandomResizedCrop))
    assert crop.scale == (0.08, 1.0)  # ViT
    crop = next(t for t in build_views("mocov3", SIZE, encoder="resnet50").first.transforms
                if isinstance(t, T.RandomResizedCrop))
    assert crop.scale == (0.2, 1.0)  # ResNet
    crop = next(t for t in build_views("mocov3", SIZE, crop_min=0.5).first.transforms
                if isinstance(t, T.RandomResizedCrop))
    assert crop.scale == (0.5, 1.0)


def test_mae_view_is_one_tensor_and_reproducible():
    views = build_views("mae", SIZE)
    torch.manual_seed(1)
    a = views(_image().convert("L"))  # grey inputs become RGB
    torch.manual_seed(1)
    b = views(_image().convert("L"))
    assert isinstance(a, torch.Tensor) and a.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(a, b)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(PolypsslError, match="mocov3, barlowtwins, mae"):
        build_views("simclr", SIZE)


# ---------------------------------------------------------------- optimisers and schedule


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_lars_excludes_1d_params_from_weight_decay_and_adaptation():
    torch.manual_seed(0)
    net = _net()
    opt = build_optimizer(net, "lars", lr=0.5, weight_decay=1e-2)
    decay, no_decay = opt.param_groups
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 1e-2
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) == 2 and len(no_decay["params"]) == 4
    bias, weight = net[0].bias, net[0].weight
    b0, w0 = bias.detach().clone(), weight.detach().clone()
    net(torch.randn(5, 4)).pow(2).sum().backward()
    gb, gw = bias.grad.clone(), weight.grad.clone()
    opt.step()
    # 1-d: a plain SGD step (no decay, no trust ratio)
    torch.testing.assert_close(bias.detach(), b0 - 0.5 * gb)
    # >= 2-d: decayed and scaled by the trust ratio
    trust = 0.001 * w0.norm() / (gw.norm() + 1e-2 * w0.norm())
    torch.testing.assert_close(weight.detach(), w0 - 0.5 * trust * (gw + 1e-2 * w0))


def test_adamw_and_sgd_groups_and_options():
    net = _net()
    opt = build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    everything = build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.1, exclude_bias_and_norm=False)
    assert len(everything.param_groups) == 1 and len(everything.param_groups[0]["params"]) == 6
    bt = build_optimizer(net, "lars", lr=0.2, weight_decay=1e-6, bias_lr=0.0048)
    assert [g["lr"] for g in bt.param_groups] == [0.2, 0.0048]
    assert isinstance(build_optimizer(net, "sgd", lr=0.1, weight_decay=0.0), torch.optim.SGD)
    with pytest.raises(PolypsslError, match="lars, adamw, sgd"):
        build_optimizer(net, "adam", lr=0.1, weight_decay=0.0)


def test_scheduler_warms_up_linearly_then_cosine_to_zero():
    net = _net()
    opt = build_optimizer(net, "sgd", lr=1.0, weight_decay=0.0, bias_lr=0.5)
    sched = build_scheduler(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[8] == pytest.approx(0.5)  # half-way through the cosine
    assert lrs[12] == pytest.approx(0.0, abs=1e-12)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * lrs[12], abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


# ---------------------------------------------------------------- the study's architectures at 224


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,encoder",
    [("mocov3", "resnet50"), ("barlowtwins", "resnet50"), ("mocov3", "vit_b16"), ("mae", "vit_b16")],
)
def test_smoke_step_of_real_architectures_at_224(method, encoder, capsys):
    torch.manual_seed(0)
    cls = {"mocov3": MoCoV3, "barlowtwins": BarlowTwins, "mae": MAE}[method]
    model = cls(encoder, 224)  # official head sizes
    views = build_views(method, 224, encoder=encoder)
    images = [views(_image(i, 256)) for i in range(2)]
    batch = torch.stack(images) if method == "mae" else [torch.stack(v) for v in zip(*images)]
    opt = build_optimizer(model, "sgd", lr=1e-4, weight_decay=0.0)
    start = time.perf_counter()
    loss = model(batch)
    loss.backward()
    opt.step()
    model.after_optimizer_step(0.1)
    with capsys.disabled():
        print(f"\n{method}/{encoder} @224 batch 2: one step {time.perf_counter() - start:.1f}s, loss {loss.item():.3f}")
    assert torch.isfinite(loss)
    assert type(model.backbone).__name__ in ("ResNet", "VisionTransformer")

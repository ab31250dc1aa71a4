"""Fine-tuning: the soft Dice loss, tiny segmenters, the training loop, resume, run.json, predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from polypssl.cli import main as cli_main
from polypssl.config import load_config
from polypssl.errors import PolypsslError
from polypssl.finetune import build_segmenter, load_segmenter
from polypssl.finetune.loop import FinetuneConfig, finetune, train_dataset, train_loader, val_loader, validate
from polypssl.finetune.loss import soft_dice_loss
from polypssl.runs import is_complete, read_json, read_jsonl

RUN_JSON_KEYS = {
    "encoder", "decoder", "image_size", "weights", "pretrain_data", "pretrain_method",
    "finetune_dataset", "best_val_mDice", "best_epoch", "epochs_run",
}


def write_kvasir_layout(root: Path, n: int, render) -> Path:
    """``root/Kvasir-SEG/{images,masks}`` with ``n`` pairs from ``render(i) -> (PIL image, bool mask)``."""
    images, masks = root / "Kvasir-SEG" / "images", root / "Kvasir-SEG" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(n):
        img, mask = render(i)
        img.save(images / f"frame{i:04d}.jpg", quality=92)
        Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB").save(masks / f"frame{i:04d}.jpg", quality=92)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """100 frames of the synthetic Kvasir-like domain (80 train / 10 val / 10 test by the protocol split)."""
    from polypssl.data.synth import render_frame

    return write_kvasir_layout(tmp_path_factory.mktemp("synth"), 100, lambda i: render_frame(0, "kvasir-seg", i, "small"))


def tiny_cfg(root: Path, run_dir: Path, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, "configs/finetune/tiny.yaml", [
        f"data.root={root}", f"loop.run_dir={run_dir}", "loop.progress=false", *overrides,
    ])


# ---------------------------------------------------------------------------------------------- loss


def test_soft_dice_is_the_protocol_formula_per_image_then_mean():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]], [[[-2.0, -2.0], [-2.0, -2.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    p = torch.sigmoid(logits)
    s = 1e-8
    per_image = [1 - 2 * ((p[i] * target[i]).sum() + s) / ((p[i] ** 2).sum() + (target[i] ** 2).sum() + s) for i in range(2)]
    torch.testing.assert_close(soft_dice_loss(logits, target), torch.stack(per_image).mean())
    # a confident perfect prediction costs (almost) nothing, the inverted one (almost) everything
    assert soft_dice_loss(target[:1] * 40 - 20, target[:1]) < 1e-6
    assert soft_dice_loss(20 - target[:1] * 40, target[:1]) > 1 - 1e-6


def test_soft_dice_gradients_reach_the_logits():
    logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
    soft_dice_loss(logits, (torch.rand(2, 1, 8, 8) > 0.5).float()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- segmenters


@pytest.mark.parametrize("encoder,size,decoder", [("resnet18", 64, "deeplabv3plus"), ("vit_tiny16", 64, "dpt")])
def test_tiny_segmenters_give_one_logit_per_pixel_and_use_every_parameter(encoder, size, decoder):
    torch.manual_seed(0)
    model = build_segmenter(encoder, "random", size)
    assert (model.encoder_name, model.image_size, model.decoder_name) == (encoder, size, decoder)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, size, size)
    out.square().mean().backward()
    # DistributedDataParallel fails on parameters outside the graph (e.g. a ViT's unused final norm or head)
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_image_size_that_does_not_fit_the_encoder_is_refused():
    with pytest.raises(PolypsslError, match="multiple of 16"):
        build_segmenter("resnet18", "random", 70)
    with pytest.raises(PolypsslError, match="unknown encoder"):
        build_segmenter("resnet17", "random", 64)


def test_frozen_encoder_trains_only_the_decoder():
    from polypssl.finetune.segmenters import freeze_encoder

    model = freeze_encoder(build_segmenter("resnet18", "random", 32))
    model.train()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    bn = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not bn.training  # encoder statistics stay as loaded


# ---------------------------------------------------------------------------------------------- data feeding


def _shapes(i: int) -> tuple[Image.Image, np.ndarray]:
    """A white rectangle on black; its mask is exactly the rectangle."""
    rng = np.random.default_rng(i)
    h, w = 96, 128
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask = np.zeros((h, w), bool)
    mask[y0 : y0 + int(rng.integers(h // 4, h // 2)), x0 : x0 + int(rng.integers(w // 4, w // 2))] = True
    return Image.fromarray(np.repeat(mask[..., None], 3, axis=2).astype(np.uint8) * 255), mask


def test_the_loop_feeds_each_image_with_its_own_mask(tmp_path):
    root = write_kvasir_layout(tmp_path / "data", 30, _shapes)
    cfg = tiny_cfg(root, tmp_path / "run", "image_size=64")
    loader = train_loader(cfg, train_dataset(cfg), batch=8)
    loader.sampler.set_epoch(3)
    images, masks = next(iter(loader))
    assert images.shape == (8, 3, 64, 64) and masks.shape == (8, 1, 64, 64)
    # bright pixels of the (colour-jittered, blurred, warped) image are the polyp; the warp's fill is dark
    bright = (images.mean(1, keepdim=True) > 0.0).float()
    inter = (bright * masks).flatten(1).sum(1)
    dice = 2 * inter / (bright.flatten(1).sum(1) + masks.flatten(1).sum(1))
    assert dice.min() > 0.85, dice
    shuffled = 2 * (bright * masks.roll(1, 0)).flatten(1).sum(1) / (bright.flatten(1).sum(1) + masks.flatten(1).sum(1))
    assert shuffled.mean() < 0.6  # the check can tell a mismatched pair


# ---------------------------------------------------------------------------------------------- training


def untrained_val_mdice(cfg: FinetuneConfig) -> float:
    from accelerate.utils import set_seed

    set_seed(cfg.loop.seed)  # the loop builds its model right after seeding, so this is its start
    model = build_segmenter(cfg.encoder, cfg.weights, cfg.image_size)
    return validate(model, val_loader(cfg, 8))["val_mDice"]


def test_fine_tuning_clearly_beats_the_untrained_model_and_writes_a_complete_run(synth_root, tmp_path):
    cfg = tiny_cfg(synth_root, tmp_path / "run", "epochs=4")
    before = untrained_val_mdice(cfg)
    run_dir = finetune(cfg)
    assert is_complete(run_dir)
    info = read_json(run_dir / "run.json")
    assert set(info) >= RUN_JSON_KEYS
    assert info["encoder"] == "resnet18" and info["decoder"] == "deeplabv3plus" and info["image_size"] == 64
    assert info["weights"] == "random" and info["pretrain_method"] == "none" and info["pretrain_data"] == "none"
    assert info["finetune_dataset"] == "kvasir-seg" and info["epochs_run"] == 4
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_mDice" in r]
    assert [r["val_n"] for r in rows] == [10] * 4
    best = max(r["val_mDice"] for r in rows)
    assert info["best_val_mDice"] == pytest.approx(best)
    assert best > before + 0.2, (before, best)
    # the kept model is the best-validation one: scoring it again gives the recorded mDice
    model, loaded_info = load_segmenter(run_dir)
    assert loaded_info == info and not model.training
    assert validate(model, val_loader(cfg, 8))["val_mDice"] == pytest.approx(info["best_val_mDice"], abs=1e-6)


def test_complete_run_invoked_again_does_nothing(synth_root, tmp_path, caplog):
    cfg = tiny_cfg(synth_root, tmp_path / "run", "epochs=1", "image_size=32")
    finetune(cfg)
    stamp = (tmp_path / "run" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        finetune(cfg)
    assert "already complete" in caplog.text
    assert (tmp_path / "run" / "model.safetensors").stat().st_mtime_ns == stamp


class Killed(Exception):
    pass


def test_killed_and_resumed_run_equals_an_uninterrupted_one(synth_root, tmp_path, monkeypatch):
    from polypssl.training import TrainingSession

    args = ("epochs=2", "image_size=32", "loop.checkpoint_every=2", "early_stop_patience=0")
    finetune(tiny_cfg(synth_root, tmp_path / "a", *args))
    original = TrainingSession.step_done

    def killed_at_step_3(self, metrics, images=0):
        original(self, metrics, images)
        if self.state.step == 3:  # inside epoch 0 (5 steps per epoch), one step after the step-2 checkpoint
            raise Killed

    monkeypatch.setattr(TrainingSession, "step_done", killed_at_step_3)
    with pytest.raises(Killed):
        finetune(tiny_cfg(synth_root, tmp_path / "b", *args))
    assert not is_complete(tmp_path / "b")
    monkeypatch.setattr(TrainingSession, "step_done", original)
    finetune(tiny_cfg(synth_root, tmp_path / "b", *args))
    assert read_json(tmp_path / "b" / "provenance.json")["resumed"]
    a, b = tmp_path / "a", tmp_path / "b"
    # the best model (epoch 0, finished after the resume) and the final weights, bit for bit
    for name in ("model.safetensors", "checkpoints/step-00000010/model.safetensors"):
        expected, got = load_file(a / name), load_file(b / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    for key in ("best_val_mDice", "best_epoch", "epochs_run"):
        assert read_json(a / "run.json")[key] == read_json(b / "run.json")[key]


def test_early_stop_ends_the_run_after_patience_epochs_without_improvement(synth_root, tmp_path):
    cfg = tiny_cfg(synth_root, tmp_path / "run", "epochs=6", "image_size=32", "lr=0", "early_stop_patience=1")
    finetune(cfg)  # lr 0: the first epoch's score is never beaten
    info = read_json(tmp_path / "run" / "run.json")
    assert info["best_epoch"] == 0 and info["epochs_run"] == 2


def test_global_batch_must_split_over_processes():
    from polypssl.finetune.loop import per_process_batch

    assert per_process_batch(48, 4) == 12
    assert per_process_batch(48, 2, accumulation=3) == 8
    with pytest.raises(PolypsslError, match="batch_size=50"):
        per_process_batch(50, 4)


# ---------------------------------------------------------------------------------------------- loading, predict


def test_load_segmenter_explains_an_unfinished_run(tmp_path):
    with pytest.raises(PolypsslError, match="run.json not found"):
        load_segmenter(tmp_path)
    (tmp_path / "run.json").write_text('{"encoder": "resnet18", "image_size": 32}')
    with pytest.raises(PolypsslError, match="model.safetensors not found"):
        load_segmenter(tmp_path)


def test_predict_writes_masks_at_the_original_size_and_overlays(synth_root, tmp_path):
    run_dir = finetune(tiny_cfg(synth_root, tmp_path / "run", "epochs=1", "image_size=32"))
    images = sorted((synth_root / "Kvasir-SEG" / "images").glob("*.jpg"))[:3]
    extra = tmp_path / "more"
    extra.mkdir()
    Image.new("RGB", (77, 41), (200, 80, 90)).save(extra / "odd.png")
    out = tmp_path / "pred"
    assert cli_main(["predict", str(run_dir), *map(str, images), str(extra), "--out", str(out)]) == 0
    for src in [*images, extra / "odd.png"]:
        mask = Image.open(out / "masks" / f"{src.stem}.png")
        assert mask.size == Image.open(src).size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / "overlays" / f"{src.stem}.png").size == mask.size


def test_predict_names_a_missing_input(synth_root, tmp_path, capsys):
    assert cli_main(["predict", str(tmp_path), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.jpg does not exist" in capsys.readouterr().err



@pytest.mark.parametrize("encoder,size", [("resnet18", 32), ("vit_tiny16", 32)])
def test_encoder_weights_from_a_backbone_file_are_loaded_exactly(tmp_path, encoder, size):
    from polypssl.backbones import build_encoder, save_backbone

    torch.manual_seed(1)
    source = build_encoder(encoder, size)
    save_backbone(source, tmp_path / "enc.safetensors", arch=encoder, method="mocov3", data="HK")
    model = build_segmenter(encoder, f"file:{tmp_path / 'enc.safetensors'}", size)
    inner = model.encoder if encoder.startswith("resnet") else model.encoder.model
    loaded, expected = inner.state_dict(), source.state_dict()
    # every encoder tensor is the file's; only the ViT's final norm (unused by DPT) is pruned after loading
    assert set(loaded) <= set(expected) and set(expected) - set(loaded) <= {"norm.weight", "norm.bias"}
    for key, value in loaded.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_weights_for_another_encoder_are_refused(tmp_path):
    from polypssl.backbones import build_encoder, save_backbone

    save_backbone(build_encoder("resnet18", 32), tmp_path / "r18.safetensors", arch="resnet18", method="mocov3", data="HK")
    with pytest.raises(PolypsslError):
        build_segmenter("resnet50", f"file:{tmp_path / 'r18.safetensors'}", 32)

"""Supervised ImageNet weights: read from the local caches, and without network fail fast with guidance."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from polypssl.backbones import build_encoder, create_backbone, load_encoder_state_dict, supervised_source
from polypssl.errors import PolypsslError


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Fresh TORCH_HOME and Hub cache, so nothing is cached and every lookup stays inside tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("POLYPSSL_TORCHVISION_MIRROR", raising=False)
    return tmp_path


@pytest.fixture
def hanging_server():
    """A loopback server that accepts connections and never answers: a network that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_offline_supervised_fails_at_once_with_what_to_fetch(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(PolypsslError) as err:
        create_backbone("resnet50", "supervised")
    message = str(err.value)
    assert "ResNet50_Weights.IMAGENET1K_V1" in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "TORCH_HOME" in message and "polypssl convert resnet50-0676ba61.pth" in message
    assert "file:" in message
    with pytest.raises(PolypsslError) as err:
        load_encoder_state_dict("vit_b16", "supervised")
    message = str(err.value)
    assert "timm/vit_base_patch16_224.augreg_in21k_ft_in1k" in message and "model.safetensors" in message
    assert "HF_HOME" in message and "--format timm --arch vit_b16" in message
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny16"])
def test_hanging_network_fails_within_the_timeout(empty_caches, monkeypatch, hanging_server, arch):
    for var in ("HF_HUB_OFFLINE", "POLYPSSL_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("POLYPSSL_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setenv("POLYPSSL_TORCHVISION_MIRROR", hanging_server)
    monkeypatch.setenv("HF_ENDPOINT", hanging_server)
    assert supervised_source(arch).url.startswith(hanging_server)
    start = time.monotonic()
    with pytest.raises(PolypsslError, match="cannot be downloaded .*timed out"):
        load_encoder_state_dict(arch, "supervised")
    assert time.monotonic() - start < 10


def test_cached_torchvision_file_is_used_without_network(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torchvision

    full = torchvision.models.resnet18().state_dict()  # the torchvision file includes fc.*
    path = empty_caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(full, path)
    sd = load_encoder_state_dict("resnet18", "supervised:IMAGENET1K_V1")
    assert "fc.weight" not in sd and torch.equal(sd["conv1.weight"], full["conv1.weight"])
    assert create_backbone("resnet18", "supervised").pretrain["pretrain_method"] == "supervised"


def test_cached_hub_file_is_used_without_network(empty_caches, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import timm

    full = timm.create_model("vit_tiny_patch16_224").state_dict()  # the Hub file includes head.*
    repo = empty_caches / "hf" / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(full, str(repo / "snapshots" / commit / "model.safetensors"))
    model = create_backbone("vit_tiny16", "supervised", image_size=32)
    assert model.pos_embed.shape == (1, 5, 192) and model.pos_embed.requires_grad
    assert torch.equal(model.blocks[0].attn.qkv.weight, full["blocks.0.attn.qkv.weight"])


def test_supervised_tags_are_checked():
    with pytest.raises(PolypsslError, match="valid tags: IMAGENET1K_V1$"):
        supervised_source("resnet18", "IMAGENET1K_V2")
    assert supervised_source("resnet50", "IMAGENET1K_V2").url.endswith("resnet50-11ad3fa6.pth")
    with pytest.raises(PolypsslError, match="valid timm tags: .*augreg_in21k_ft_in1k"):
        supervised_source("vit_b16", "in22k")
    with pytest.raises(PolypsslError, match="not supervised pretraining .*mae:PATH"):
        supervised_source("vit_b16", "mae")
    assert supervised_source("vit_b16").name == "vit_base_patch16_224.augreg_in21k_ft_in1k"
    assert build_encoder("resnet18") is not None

"""`polypssl convert`: official checkpoints become encoder-only safetensors usable outside polypssl."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_backbones import barlowtwins_checkpoint, mae_checkpoint, mocov3_checkpoint

from polypssl.backbones import build_encoder, create_backbone, describe_weights, load_encoder_state_dict
from polypssl.cli import main
from polypssl.errors import PolypsslError
from polypssl.runs import sha256_file


def _metadata(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata()


def test_convert_mocov3_resnet_prints_kept_and_dropped(tmp_path, capsys):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18").state_dict()
    src, dest = tmp_path / "r-50-100ep.pth.tar", tmp_path / "out" / "mocov3_r18.safetensors"
    torch.save(mocov3_checkpoint(encoder, "resnet"), src)
    assert main(["convert", str(src), str(dest)]) == 0
    out = capsys.readouterr().out
    assert "format mocov3: resnet18 encoder, pretrain_method=mocov3, pretrain_data=IN" in out
    assert f"kept {len(encoder)} tensors" in out
    assert "module.base_encoder.fc.* (5)" in out and "module.momentum_encoder.* (" in out
    assert "module.predictor.* (3)" in out
    meta = _metadata(dest)
    assert meta["format"] == "polypssl-backbone" and meta["arch"] == "resnet18"
    assert meta["source_sha256"] == sha256_file(src) and meta["source_format"] == "mocov3"
    converted = load_file(str(dest))
    assert converted.keys() == encoder.keys()
    assert all(torch.equal(converted[k], encoder[k]) for k in encoder)
    assert describe_weights(f"file:{dest}")["pretrain_method"] == "mocov3"
    # plain torchvision model: only the classifier is missing
    import torchvision

    result = torchvision.models.resnet18().load_state_dict(converted, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


def test_convert_barlowtwins_and_mae_with_data_label(tmp_path, capsys):
    torch.manual_seed(0)
    rn, vit = build_encoder("resnet18").state_dict(), build_encoder("vit_tiny16").state_dict()
    torch.save(barlowtwins_checkpoint(rn), tmp_path / "checkpoint.pth")
    torch.save(mae_checkpoint(vit, full=True), tmp_path / "mae.pth")
    assert main(["convert", str(tmp_path / "checkpoint.pth"), str(tmp_path / "bt.safetensors"),
                 "--format", "barlowtwins", "--arch", "resnet18", "--data", "HK"]) == 0
    assert main(["convert", str(tmp_path / "mae.pth"), str(tmp_path / "mae.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "module.bn.* (3), module.projector.* (3)" in out and "decoder_* (5), mask_token* (1)" in out
    assert describe_weights(f"file:{tmp_path / 'bt.safetensors'}") == {
        "weights": f"file:{tmp_path / 'bt.safetensors'}", "pretrain_method": "barlowtwins", "pretrain_data": "HK"}
    sd = load_encoder_state_dict("vit_tiny16", f"file:{tmp_path / 'mae.safetensors'}")
    assert all(torch.equal(sd[k], vit[k]) for k in vit)


def test_convert_errors_are_one_line(tmp_path, capsys):
    torch.save({"foo": torch.zeros(3)}, tmp_path / "odd.pth")
    assert main(["convert", str(tmp_path / "odd.pth"), str(tmp_path / "x.safetensors")]) == 2
    assert "cannot tell which format" in capsys.readouterr().err
    with pytest.raises(PolypsslError, match=r"must end in \.safetensors"):
        from polypssl.backbones.convert import convert_checkpoint

        convert_checkpoint(tmp_path / "odd.pth", tmp_path / "x.pth")


def _quick_random(arch: str) -> dict[str, torch.Tensor]:
    """Full-size random weights without the libraries' slow initialisers (shapes are what matters)."""
    sd = build_encoder(arch, init=False).state_dict()
    for value in sd.values():
        if value.is_floating_point():
            value.normal_(0.0, 0.02)
        else:
            value.zero_()
    return sd


@pytest.mark.slow
def test_real_study_encoders_convert_load_plainly_and_run_at_224(tmp_path):
    """resnet50 and vit_b16 at full size: converted files load into plain torchvision / timm models."""
    import timm
    import torchvision

    torch.manual_seed(0)
    rn = _quick_random("resnet50")
    torch.save(mocov3_checkpoint(rn, "resnet"), tmp_path / "r-50-100ep.pth.tar")
    assert main(["convert", str(tmp_path / "r-50-100ep.pth.tar"), str(tmp_path / "rn.safetensors")]) == 0
    with torch.device("meta"):  # plain models without their slow random initialisation
        plain_rn, plain_vit = torchvision.models.resnet50(), timm.create_model("vit_base_patch16_224")
    result = plain_rn.load_state_dict(load_file(str(tmp_path / "rn.safetensors")), strict=False, assign=True)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    model = create_backbone("resnet50", f"file:{tmp_path / 'rn.safetensors'}").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 2048)

    vit = _quick_random("vit_b16")
    torch.save(mae_checkpoint(vit), tmp_path / "mae_pretrain_vit_base.pth")
    assert main(["convert", str(tmp_path / "mae_pretrain_vit_base.pth"), str(tmp_path / "vit.safetensors")]) == 0
    result = plain_vit.load_state_dict(load_file(str(tmp_path / "vit.safetensors")), strict=False, assign=True)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"] and not result.unexpected_keys
    model = create_backbone("vit_b16", f"file:{tmp_path / 'vit.safetensors'}").eval()
    assert not model.pos_embed.requires_grad
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 768)

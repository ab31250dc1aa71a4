"""polypssl.backbones: encoders by name, official checkpoint layouts, strict and safe loading."""

from __future__ import annotations

import argparse
import logging
import pickle

import pytest
import torch

from polypssl.backbones import (
    backbone_info,
    build_encoder,
    create_backbone,
    describe_weights,
    keeps_fixed_pos_embed,
    list_backbones,
    load_encoder_state_dict,
    parse_weights,
    save_backbone,
    sincos_2d_pos_embed,
)
from polypssl.errors import PolypsslError

# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def resnet_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return build_encoder("resnet18").state_dict()


@pytest.fixture(scope="module")
def vit_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    sd = build_encoder("vit_tiny16").state_dict()
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"])  # timm initialises it small; make it distinctive
    return sd


def _like(prefix: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {prefix + k: torch.randn(s) for k, s in shapes.items()}


def mocov3_checkpoint(encoder: dict[str, torch.Tensor], family: str) -> dict:
    """MoCo v3 release layout: state_dict with base/momentum encoders (projector inside) and a predictor."""
    head = "fc" if family == "resnet" else "head"
    projector = {f"{head}.0.weight": (64, 8), f"{head}.1.weight": (64,), f"{head}.1.bias": (64,),
                 f"{head}.1.running_mean": (64,), f"{head}.3.weight": (16, 64)}
    sd = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
    sd.update(_like("module.base_encoder.", projector))
    sd.update({f"module.momentum_encoder.{k}": v.clone() + 1 for k, v in encoder.items()})
    sd.update(_like("module.momentum_encoder.", projector))
    sd.update(_like("module.predictor.", {"0.weight": (64, 16), "1.weight": (64,), "3.weight": (16, 64)}))
    return {"epoch": 100, "arch": "resnet50" if family == "resnet" else "vit_base", "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.6, "params": [0, 1]}]},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0}}


def mae_checkpoint(encoder: dict[str, torch.Tensor], full: bool = False) -> dict:
    """MAE layout: {'model': encoder + mask_token + decoder_*}; the full training file also stores args."""
    sd = dict(encoder)
    sd.update(_like("", {"mask_token": (1, 1, 32), "decoder_embed.weight": (32, 192),
                         "decoder_pos_embed": (1, 197, 32), "decoder_blocks.0.norm1.weight": (32,),
                         "decoder_norm.weight": (32,), "decoder_pred.weight": (768, 32)}))
    ckpt = {"model": sd}
    if full:
        ckpt.update(epoch=799, optimizer={"state": {}, "param_groups": []},
                    args=argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True))
    return ckpt


def barlowtwins_checkpoint(encoder: dict[str, torch.Tensor]) -> dict:
    """Barlow Twins training checkpoint.pth: module.backbone / module.projector / module.bn."""
    sd = {f"module.backbone.{k}": v for k, v in encoder.items()}
    sd.update(_like("module.projector.", {"0.weight": (64, 512), "1.weight": (64,), "3.weight": (64, 64)}))
    sd.update({"module.bn.running_mean": torch.zeros(64), "module.bn.running_var": torch.ones(64),
               "module.bn.num_batches_tracked": torch.tensor(5)})
    return {"epoch": 1000, "model": sd, "optimizer": {"state": {}, "param_groups": []}}


def assert_same(sd: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> None:
    assert list(sd) == list(original)
    for key, value in original.items():
        assert torch.equal(sd[key], value), key


# ------------------------------------------------------------------------------------------- registry


def test_registry_names_and_entries():
    assert list_backbones()[:2] == ["resnet50", "vit_b16"] or set(list_backbones()) >= {
        "resnet50", "resnet18", "vit_b16", "vit_small16", "vit_tiny16"}
    vit = backbone_info("vit_b16")
    assert (vit.family, vit.model_name, vit.num_features, vit.embed_dim, vit.depth) == (
        "vit", "vit_base_patch16_224", 768, 768, 12)
    rn = backbone_info("resnet50")
    assert (rn.family, rn.model_name, rn.num_features) == ("resnet", "resnet50", 2048)
    with pytest.raises(PolypsslError, match="valid encoders: resnet50.*vit_tiny16"):
        backbone_info("resnet51")


def test_weight_specs_parse_and_unknown_forms_are_listed(tmp_path):
    assert parse_weights("random").kind == "random"
    assert parse_weights("supervised").tag is None
    assert parse_weights("supervised:IMAGENET1K_V2").tag == "IMAGENET1K_V2"
    assert parse_weights(f"mocov3:{tmp_path}/a.pth.tar").path == tmp_path / "a.pth.tar"
    for bad in ("imagenet", "moco:x.pth", "file:", "random:x", ""):
        with pytest.raises(PolypsslError, match=r"random|supervised|missing path|non-empty"):
            parse_weights(bad)
    with pytest.raises(PolypsslError, match=r"valid forms: random, supervised\[:TAG\], file:PATH"):
        parse_weights("imagenet")


# ----------------------------------------------------------------------------------- create_backbone


def test_resnet_encoder_is_torchvision_without_fc():
    model = create_backbone("resnet18")
    assert isinstance(model.fc, torch.nn.Identity)
    assert (model.arch, model.num_features) == ("resnet18", 512)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert model.pretrain == {"weights": "random", "pretrain_method": "none", "pretrain_data": "none"}


def test_vit_at_other_size_from_224_weights_interpolates_pos_embed(tmp_path, vit_sd, caplog):
    path = tmp_path / "vit.safetensors"
    save_backbone(vit_sd, path, arch="vit_tiny16", method="supervised", data="IN")
    with caplog.at_level(logging.INFO, logger="polypssl.backbones"):
        model = create_backbone("vit_tiny16", f"file:{path}", image_size=64)
    assert "interpolated from a 14x14 to a 4x4 patch grid" in caplog.text
    assert model.pos_embed.shape == (1, 17, 192)
    assert torch.equal(model.pos_embed[:, 0], vit_sd["pos_embed"][:, 0])  # cls position untouched
    assert torch.equal(model.blocks[3].mlp.fc1.weight, vit_sd["blocks.3.mlp.fc1.weight"])
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 192)
    assert model.pos_embed.requires_grad  # supervised weights: position embedding trains


def test_sincos_pos_embed_matches_mocov3_formula_and_is_frozen():
    model = create_backbone("vit_tiny16", image_size=64, sincos_pos_embed=True)
    pos = model.pos_embed.detach()[0]
    assert not model.pos_embed.requires_grad
    assert torch.equal(pos[0], torch.zeros(192))
    # patch (row 1, col 2) is token 1 + 1*4 + 2; first quarter sin(row * w_k), third quarter sin(col * w_k)
    omega = 1.0 / 10000 ** (torch.arange(48, dtype=torch.float64) / 48)
    token = pos[1 + 1 * 4 + 2].double()
    assert torch.allclose(token[:48], torch.sin(1 * omega), atol=1e-6)
    assert torch.allclose(token[48:96], torch.cos(1 * omega), atol=1e-6)
    assert torch.allclose(token[96:144], torch.sin(2 * omega), atol=1e-6)
    assert torch.allclose(token[144:], torch.cos(2 * omega), atol=1e-6)
    assert sincos_2d_pos_embed(192, (4, 4)).shape == (1, 17, 192)
    assert create_backbone("vit_tiny16", image_size=64, sincos_pos_embed=True,
                           trainable_pos_embed=True).pos_embed.requires_grad


def test_image_size_must_fit_patches():
    with pytest.raises(PolypsslError, match="multiple of the patch size 16"):
        create_backbone("vit_tiny16", image_size=100)


# --------------------------------------------------------------------------------- official layouts


def test_mocov3_resnet_release_loads_encoder_exactly(tmp_path, resnet_sd, caplog):
    path = tmp_path / "r-50-100ep.pth.tar"
    torch.save(mocov3_checkpoint(resnet_sd, "resnet"), path)
    with caplog.at_level(logging.INFO, logger="polypssl.backbones"):
        sd = load_encoder_state_dict("resnet18", f"mocov3:{path}")
    assert_same(sd, resnet_sd)
    assert "module.momentum_encoder.* (" in caplog.text and "module.base_encoder.fc.* (5)" in caplog.text
    assert "module.predictor.* (3)" in caplog.text
    assert describe_weights(f"mocov3:{path}") == {
        "weights": f"mocov3:{path}", "pretrain_method": "mocov3", "pretrain_data": "IN"}
    model = create_backbone("resnet18", f"auto:{path}")
    assert torch.equal(model.layer4[1].bn2.running_var, resnet_sd["layer4.1.bn2.running_var"])


def test_mocov3_vit_release_keeps_pos_embed_fixed_by_default(tmp_path, vit_sd):
    path = tmp_path / "vit-b-300ep.pth.tar"
    torch.save(mocov3_checkpoint(vit_sd, "vit"), path)
    assert_same(load_encoder_state_dict("vit_tiny16", f"mocov3:{path}"), vit_sd)
    model = create_backbone("vit_tiny16", f"mocov3:{path}")
    assert torch.equal(model.pos_embed, vit_sd["pos_embed"]) and not model.pos_embed.requires_grad
    assert model.patch_embed.proj.weight.requires_grad
    assert create_backbone("vit_tiny16", f"mocov3:{path}", trainable_pos_embed=True).pos_embed.requires_grad
    assert keeps_fixed_pos_embed("vit_tiny16", f"mocov3:{path}")
    assert not keeps_fixed_pos_embed("resnet18", f"mocov3:{path}")


@pytest.mark.parametrize("full", [False, True], ids=["release", "training-checkpoint"])
def test_mae_release_drops_decoder_and_mask_token(tmp_path, vit_sd, full, caplog):
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save(mae_checkpoint(vit_sd, full), path)
    with caplog.at_level(logging.INFO, logger="polypssl.backbones"):
        assert_same(load_encoder_state_dict("vit_tiny16", f"mae:{path}"), vit_sd)
    assert "decoder_* (5)" in caplog.text and "mask_token* (1)" in caplog.text
    assert describe_weights(f"auto:{path}")["pretrain_method"] == "mae"
    assert not create_backbone("vit_tiny16", f"auto:{path}").pos_embed.requires_grad


def test_barlowtwins_both_layouts(tmp_path, resnet_sd, caplog):
    bare, full = tmp_path / "resnet50.pth", tmp_path / "checkpoint.pth"
    torch.save(resnet_sd, bare)
    torch.save(barlowtwins_checkpoint(resnet_sd), full)
    assert_same(load_encoder_state_dict("resnet18", f"barlowtwins:{bare}"), resnet_sd)
    with caplog.at_level(logging.INFO, logger="polypssl.backbones"):
        assert_same(load_encoder_state_dict("resnet18", f"barlowtwins:{full}"), resnet_sd)
    assert "module.projector.* (3)" in caplog.text and "module.bn.* (3)" in caplog.text
    for path in (bare, full):
        assert describe_weights(f"auto:{path}")["pretrain_method"] == "barlowtwins"


def test_loaded_state_dict_fits_segmentation_models_pytorch_encoder(tmp_path, resnet_sd):
    smp = pytest.importorskip("segmentation_models_pytorch")
    path = tmp_path / "checkpoint.pth"
    torch.save(barlowtwins_checkpoint(resnet_sd), path)
    model = smp.DeepLabV3Plus(encoder_name="resnet18", encoder_weights=None, classes=1)
    model.encoder.load_state_dict(load_encoder_state_dict("resnet18", f"barlowtwins:{path}"), strict=True)
    assert torch.equal(model.encoder.conv1.weight, resnet_sd["conv1.weight"])


# ----------------------------------------------------------------------------------- strict loading


def test_missing_block_is_named(tmp_path, resnet_sd):
    broken = {k: v for k, v in resnet_sd.items() if not k.startswith("layer3.1.")}
    path = tmp_path / "broken.pth.tar"
    torch.save(mocov3_checkpoint(broken, "resnet"), path)
    with pytest.raises(PolypsslError, match=r"missing: layer3\.1\.conv1\.weight.*\(\+\d+ more\)") as err:
        load_encoder_state_dict("resnet18", f"mocov3:{path}")
    assert str(path) in str(err.value)


def test_wrong_shape_is_named(tmp_path, vit_sd):
    bad = dict(vit_sd, **{"blocks.5.attn.qkv.weight": torch.zeros(576, 100)})
    path = tmp_path / "mae.pth"
    torch.save(mae_checkpoint(bad), path)
    with pytest.raises(PolypsslError, match=r"wrong shape: blocks\.5\.attn\.qkv\.weight \(576, 100\)"):
        load_encoder_state_dict("vit_tiny16", f"mae:{path}")


def test_unknown_extra_keys_are_not_silently_dropped(tmp_path, resnet_sd):
    ckpt = mocov3_checkpoint(resnet_sd, "resnet")
    ckpt["state_dict"]["module.queue"] = torch.zeros(3)
    path = tmp_path / "odd.pth.tar"
    torch.save(ckpt, path)
    with pytest.raises(PolypsslError, match=r"1 unexpected: module\.queue"):
        load_encoder_state_dict("resnet18", f"mocov3:{path}")


def test_wrong_family_and_wrong_arch_are_explained(tmp_path, resnet_sd, vit_sd):
    path = tmp_path / "mae.pth"
    torch.save(mae_checkpoint(vit_sd), path)
    with pytest.raises(PolypsslError, match="holds vit weights but encoder resnet18 is a resnet"):
        load_encoder_state_dict("resnet18", f"mae:{path}")
    path = tmp_path / "r18.pth"
    torch.save(resnet_sd, path)
    with pytest.raises(PolypsslError, match="looks like a resnet18 state dict"):
        load_encoder_state_dict("resnet50", f"barlowtwins:{path}")


def test_file_weights_check_arch_and_metadata(tmp_path, vit_sd):
    path = tmp_path / "backbone.safetensors"
    save_backbone(vit_sd, path, arch="vit_tiny16", method="mocov3", data="HK", source_sha256="abc")
    assert describe_weights(f"file:{path}") == {
        "weights": f"file:{path}", "pretrain_method": "mocov3", "pretrain_data": "HK"}
    assert_same(load_encoder_state_dict("vit_tiny16", f"file:{path}"), vit_sd)
    assert not create_backbone("vit_tiny16", f"file:{path}").pos_embed.requires_grad  # MoCo v3 -> sin-cos
    with pytest.raises(PolypsslError, match="holds a vit_tiny16 backbone but encoder vit_small16"):
        load_encoder_state_dict("vit_small16", f"file:{path}")
    with pytest.raises(PolypsslError, match="does not exist"):
        describe_weights(f"file:{tmp_path}/nope.safetensors")
    with pytest.raises(PolypsslError, match="unexpected: head.weight"):
        save_backbone(dict(vit_sd, **{"head.weight": torch.zeros(3, 192)}), tmp_path / "x.safetensors",
                      arch="vit_tiny16", method="none", data="none")


def test_describe_file_reads_header_only(tmp_path, resnet_sd, monkeypatch):
    import safetensors.torch

    path = tmp_path / "backbone.safetensors"
    save_backbone(resnet_sd, path, arch="resnet18", method="barlowtwins", data="kvasir-seg")

    def no_tensors(*args, **kwargs):
        raise AssertionError("describe_weights loaded tensors")

    monkeypatch.setattr(safetensors.torch, "load_file", no_tensors)
    monkeypatch.setattr(torch, "load", no_tensors)
    assert describe_weights(f"file:{path}")["pretrain_data"] == "kvasir-seg"
    assert describe_weights(f"auto:{path}")["pretrain_method"] == "barlowtwins"
    assert describe_weights("supervised")["pretrain_method"] == "supervised"
    assert describe_weights("random")["pretrain_data"] == "none"


# -------------------------------------------------------------------------------------- safe loading


class _Payload:
    """Unpickling this calls open(path, 'w'): a stand-in for arbitrary code in a checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, resnet_sd):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    ckpt = mocov3_checkpoint(resnet_sd, "resnet")
    ckpt["payload"] = _Payload(marker)
    torch.save(ckpt, path)
    # The payload is real: an unsafe unpickle would create the marker file.
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))
    assert (tmp_path / "control").exists()
    for spec in (f"mocov3:{path}", f"auto:{path}"):
        with pytest.raises(PolypsslError, match=r"refused to load .*evil\.pth\.tar.*weights_only=True"):
            load_encoder_state_dict("resnet18", spec)
    with pytest.raises(PolypsslError, match="refused to load"):
        describe_weights(f"auto:{path}")
    assert not marker.exists()


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(PolypsslError, match=r"x\.pth"):
        load_encoder_state_dict("resnet18", f"auto:{path}")

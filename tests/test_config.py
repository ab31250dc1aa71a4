"""Typed configs: defaults < YAML preset < key=value overrides, loud on typos."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from polypssl.config import config_to_yaml, load_config, resolve_config_path
from polypssl.errors import PolypsslError
from polypssl.training import LoopConfig


@dataclass
class DataSection:
    name: str = "kvasir-seg"
    root: str = "data/kvasir-seg"


@dataclass
class StageConfig:
    encoder: str = "resnet50"
    epochs: int = 200
    lr: float = 1e-4
    data: DataSection = field(default_factory=DataSection)
    loop: LoopConfig = field(default_factory=LoopConfig)


def test_yaml_then_overrides_take_precedence(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("encoder: vit_b16\nepochs: 10\ndata:\n  root: /data/kvasir\n")
    cfg = load_config(StageConfig, preset, ["epochs=3", "loop.seed=7", "data.name=cvc-clinicdb"])
    assert isinstance(cfg, StageConfig)
    assert (cfg.encoder, cfg.epochs, cfg.lr) == ("vit_b16", 3, 1e-4)
    assert (cfg.data.name, cfg.data.root, cfg.loop.seed) == ("cvc-clinicdb", "/data/kvasir", 7)


def test_unknown_override_names_the_key_and_lists_valid_ones():
    with pytest.raises(PolypsslError) as err:
        load_config(StageConfig, None, ["loop.sed=1"])
    message = str(err.value)
    assert "loop.sed" in message and "loop.seed" in message and "data.root" in message


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    preset = tmp_path / "typo.yaml"
    preset.write_text("epoch: 5\n")
    with pytest.raises(PolypsslError, match=r"unknown config key 'epoch' in .*typo.yaml.*epochs"):
        load_config(StageConfig, preset)


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(PolypsslError, match="epochs"):
        load_config(StageConfig, None, ["epochs=many"])


def test_override_without_equals_sign_is_refused():
    with pytest.raises(PolypsslError, match="key=value"):
        load_config(StageConfig, None, ["epochs"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(StageConfig, None, ["lr=0.5", "loop.tags=[a,b]"])
    saved = tmp_path / "config.yaml"
    saved.write_text(config_to_yaml(cfg))
    assert load_config(StageConfig, saved) == cfg


def test_missing_config_file_lists_presets():
    with pytest.raises(PolypsslError, match="config file not found: nope"):
        resolve_config_path("nope", "pretrain")


def test_typo_gets_a_suggestion():
    with pytest.raises(PolypsslError, match=r"Did you mean: data\.root"):
        load_config(StageConfig, None, ["data.rot=/x"])

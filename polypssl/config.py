"""Typed configs: dataclass schemas, YAML presets and ``key=value`` overrides (OmegaConf).

A stage declares its schema as a dataclass; ``load_config`` merges schema defaults, a YAML
preset and command-line overrides in that order, and returns an instance of the dataclass.
Unknown keys and wrong types end in one :class:`PolypsslError` that names the key and lists
the valid ones, so a typo in a sweep never silently runs the default.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from polypssl.errors import PolypsslError

T = TypeVar("T")

#: Presets shipped with the repository, found by name: ``polypssl pretrain mocov3_resnet50``.
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(config: str | Path, stage: str) -> Path:
    """Return the YAML file for ``config``: an existing path, or a preset name under ``configs/<stage>/``."""
    path = Path(config)
    if path.is_file():
        return path
    preset = CONFIG_ROOT / stage / f"{Path(config).stem}.yaml"
    if preset.is_file() and path.suffix in ("", ".yaml", ".yml") and len(path.parts) == 1:
        return preset
    available = sorted(p.stem for p in (CONFIG_ROOT / stage).glob("*.yaml"))
    raise PolypsslError(
        f"config file not found: {config}. Pass a YAML path or one of the {stage} presets: "
        f"{', '.join(available) or '(none)'}"
    )


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(node, DictConfig):
        for key in node:
            child = node._get_node(key)
            full = f"{prefix}{key}"
            if isinstance(child, DictConfig) and not child._is_none():
                keys.extend(_valid_keys(child, f"{full}."))
            else:
                keys.append(full)
    return keys


def _key_error(err: OmegaConfBaseException, schema_node: DictConfig, source: str) -> PolypsslError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    valid = _valid_keys(schema_node)
    if isinstance(err, ConfigKeyError):
        close = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return PolypsslError(
            f"unknown config key '{key}' in {source}.{hint} Valid keys: {', '.join(valid)}"
        )
    msg = str(err).splitlines()[0]
    return PolypsslError(f"invalid value for config key '{key}' in {source}: {msg}")


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a ``schema`` instance from defaults < YAML file < ``key=value`` overrides."""
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    merged = base
    if path is not None:
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # yaml errors come in several types
            raise PolypsslError(f"cannot parse config {path}: {err}") from err
        try:
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as err:
            raise _key_error(err, base, str(path)) from err
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise PolypsslError(f"overrides must look like key=value, got: {' '.join(bad)}")
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise _key_error(err, base, "command-line overrides") from err
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (ValidationError, OmegaConfBaseException) as err:
        raise _key_error(err, base, str(path or "config")) from err


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for JSON, trackers and hashing)."""
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def config_to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, loadable again with :func:`load_config`."""
    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)))

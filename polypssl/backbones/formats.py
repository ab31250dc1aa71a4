"""Reading checkpoints safely and taking the encoder out of each official layout.

Layouts (docs/protocol.md section 7):

- ``mocov3``: ``{"state_dict": ...}`` with ``module.base_encoder.*`` (kept, prefix stripped), the projector as
  ``fc.*`` (ResNet) / ``head.*`` (ViT) inside it, ``module.momentum_encoder.*`` and ``module.predictor.*``.
- ``mae``: ``{"model": ...}`` with timm ViT names; ``decoder_*`` and ``mask_token`` belong to the decoder.
- ``barlowtwins``: the bare torchvision ``resnet50.pth`` (no ``fc.*``), or the training ``checkpoint.pth``
  ``{"model": ...}`` with ``module.backbone.*`` (kept), ``module.projector.*`` and ``module.bn.*``.
- ``torchvision`` / ``timm``: a plain state dict of that library, classifier ``fc.*`` / ``head.*``.
- ``polypssl``: our safetensors (``save_backbone``), encoder keys only, metadata ``format=polypssl-backbone``.

Only the heads named per format may be dropped; anything else that is not an encoder key stays in the
state dict so that strict loading reports it.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polypssl.errors import PolypsslError

logger = logging.getLogger(__name__)

POLYPSSL_FORMAT = "polypssl-backbone"
#: formats a user can name (``polypssl convert --format``); ``polypssl`` is our own files.
OFFICIAL_FORMATS = ("mocov3", "mae", "barlowtwins")
SOURCE_FORMATS = (*OFFICIAL_FORMATS, "torchvision", "timm")
METHOD_OF_FORMAT = {
    "mocov3": "mocov3",
    "mae": "mae",
    "barlowtwins": "barlowtwins",
    "torchvision": "supervised",
    "timm": "supervised",
}

# Objects a plain training checkpoint legitimately holds besides tensors: MAE's full checkpoints store
# their argparse arguments. Namespace is an attribute bag; unpickling it runs no code of the file's choosing.
_SAFE_GLOBALS = [argparse.Namespace]


@dataclass
class Checkpoint:
    """A checkpoint as read from disk: the top-level object, plus safetensors metadata when there is any."""

    path: Path
    obj: Any
    metadata: dict[str, str] = field(default_factory=dict)
    is_safetensors: bool = False


@dataclass
class Extracted:
    """The encoder tensors taken out of a checkpoint and what was dropped (grouped by head prefix)."""

    state_dict: dict[str, torch.Tensor]
    fmt: str
    dropped: dict[str, int] = field(default_factory=dict)  # head prefix -> number of tensors

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())


# ---------------------------------------------------------------------------------------------- reading


def _require_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise PolypsslError(f"checkpoint {path} does not exist (or is not a file)")
    return path


def is_safetensors_file(path: str | Path) -> bool:
    """True when ``path`` starts with a safetensors header (8-byte length, then a JSON object)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < size < 100_000_000


def read_safetensors_header(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata of a safetensors file, without reading any tensor data."""
    from safetensors import safe_open

    path = _require_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys()), dict(fh.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise PolypsslError(f"cannot read safetensors file {path}: {err}") from err


def torch_load_safe(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code from the file."""
    path = _require_file(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()
        reason = next((line for line in detail if "GLOBAL" in line or "global" in line), detail[0] if detail else "")
        raise PolypsslError(
            f"refused to load {path}: it is a pickle that would create objects other than tensors "
            f"({reason.strip()}). polypssl reads checkpoints only with torch.load(weights_only=True) or "
            "safetensors, so nothing in the file runs. If you trust where it came from, re-save just its "
            "state dict (tensors) with torch.save or safetensors and pass that file."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise PolypsslError(f"cannot read checkpoint {path}: {err}") from err


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a safetensors file or a (weights-only) torch checkpoint."""
    path = _require_file(path)
    if is_safetensors_file(path):
        from safetensors.torch import load_file

        _, metadata = read_safetensors_header(path)
        return Checkpoint(path, load_file(str(path), device="cpu"), metadata, is_safetensors=True)
    return Checkpoint(path, torch_load_safe(path))


# ---------------------------------------------------------------------------------------------- layouts


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def tensor_dict(ckpt: Checkpoint, wrappers: Iterable[str] = ("state_dict", "model")) -> tuple[dict, str | None]:
    """The state dict inside ``ckpt`` and the wrapper key it sat under (None for a bare state dict)."""
    obj = ckpt.obj
    if _is_tensor_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping):
        for key in wrappers:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key]), key
        top = ", ".join(map(str, list(obj)[:10]))
        raise PolypsslError(
            f"{ckpt.path}: no state dict found (looked for a dict of tensors at the top level or under "
            f"{' / '.join(repr(w) for w in wrappers)}); top-level keys: {top}"
        )
    raise PolypsslError(f"{ckpt.path}: expected a dict of tensors, found {type(obj).__name__}")


def family_of_keys(keys: Iterable[str]) -> str | None:
    """``resnet`` or ``vit`` judged from key names after any known prefix, else None."""
    names = set()
    for key in keys:
        for prefix in ("module.base_encoder.", "base_encoder.", "module.backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        names.add(key)
    if {"cls_token", "patch_embed.proj.weight"} & names:
        return "vit"
    if "conv1.weight" in names and any(k.startswith("layer1.") for k in names):
        return "resnet"
    return None


def detect_format(ckpt: Checkpoint) -> str:
    """Which layout ``ckpt`` is in, judged from its keys (``auto:``)."""
    if ckpt.metadata.get("format") == POLYPSSL_FORMAT:
        return "polypssl"
    sd, wrapper = tensor_dict(ckpt)
    keys = list(sd)
    family = family_of_keys(keys)
    if any(k.startswith(("module.base_encoder.", "base_encoder.")) for k in keys):
        return "mocov3"
    if any(k.startswith("module.backbone.") for k in keys):
        return "barlowtwins"
    if family == "vit":
        if any(k.startswith("decoder_") or k == "mask_token" for k in keys) or (
            wrapper == "model" and "head.weight" not in sd
        ):
            return "mae"
        if "head.weight" in sd:
            return "timm"
    if family == "resnet":
        if "fc.weight" in sd:
            return "torchvision"
        logger.warning(
            "%s: a bare torchvision ResNet state dict without fc.* is the layout of the official Barlow Twins "
            "resnet50.pth; treating it as barlowtwins (pass torchvision explicitly if it is not)",
            ckpt.path,
        )
        return "barlowtwins"
    sample = ", ".join(keys[:8])
    raise PolypsslError(
        f"{ckpt.path}: cannot tell which format this checkpoint is in (keys start: {sample}). Name it "
        f"explicitly: mocov3:PATH, mae:PATH, barlowtwins:PATH, or `polypssl convert --format "
        f"{{{','.join(SOURCE_FORMATS)}}}`"
    )


def _split(
    sd: Mapping[str, torch.Tensor],
    keep_prefix: str | None,
    heads: Iterable[str] = (),
    outer_heads: Iterable[str] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Strip ``keep_prefix``, drop the named heads, keep everything else.

    ``heads`` are encoder-relative prefixes (``fc.`` is the projector inside ``module.base_encoder.``);
    ``outer_heads`` are whole-key prefixes (``module.momentum_encoder.``). Keys that are neither kept nor a
    known head stay in the result unchanged, so strict loading names them instead of skipping them.
    """
    heads, outer_heads = tuple(heads), tuple(outer_heads)
    kept: dict[str, torch.Tensor] = {}
    dropped: Counter[str] = Counter()
    for key, value in sd.items():
        outer = next((p for p in outer_heads if key.startswith(p)), None)
        if outer is not None:
            dropped[outer] += 1
            continue
        if keep_prefix is None or key.startswith(keep_prefix):
            name = key[len(keep_prefix or ""):]
            inner = next((p for p in heads if name.startswith(p)), None)
            if inner is not None:
                dropped[(keep_prefix or "") + inner] += 1
                continue
            kept[name] = value
        else:
            kept[key] = value
    return kept, dict(dropped)


def extract_encoder(ckpt: Checkpoint, fmt: str, family: str) -> Extracted:
    """Take the encoder out of ``ckpt`` (in layout ``fmt``) and name what was dropped."""
    if fmt == "polypssl":
        if ckpt.metadata.get("format") != POLYPSSL_FORMAT:
            raise PolypsslError(
                f"{ckpt.path} is not a polypssl backbone file (its metadata has no format={POLYPSSL_FORMAT}); "
                "convert it with `polypssl convert` or pass it as auto:PATH"
            )
        sd, _ = tensor_dict(ckpt, wrappers=())
        return Extracted(sd, fmt)
    head = ("fc.",) if family == "resnet" else ("head.",)
    if fmt == "mocov3":
        sd, _ = tensor_dict(ckpt, wrappers=("state_dict",))
        prefix = "module.base_encoder." if any(k.startswith("module.") for k in sd) else "base_encoder."
        if not any(k.startswith(prefix) for k in sd):
            raise PolypsslError(
                f"{ckpt.path}: not a MoCo v3 checkpoint: no key starts with 'module.base_encoder.' "
                f"(keys start: {', '.join(list(sd)[:6])})"
            )
        other = "module." if prefix.startswith("module.") else ""
        kept, dropped = _split(sd, prefix, head, (f"{other}momentum_encoder.", f"{other}predictor."))
        return Extracted(kept, fmt, dropped)
    if fmt == "mae":
        sd, _ = tensor_dict(ckpt, wrappers=("model", "state_dict"))
        kept, dropped = _split(sd, None, ("decoder_", "mask_token", *head))
        return Extracted(kept, fmt, dropped)
    if fmt == "barlowtwins":
        sd, _ = tensor_dict(ckpt, wrappers=("model", "state_dict"))
        if any(k.startswith("module.backbone.") for k in sd):
            kept, dropped = _split(sd, "module.backbone.", head, ("module.projector.", "module.bn."))
        else:
            kept, dropped = _split(sd, None, head)
        return Extracted(kept, fmt, dropped)
    if fmt in ("torchvision", "timm"):
        sd, _ = tensor_dict(ckpt)
        kept, dropped = _split(sd, None, head)
        return Extracted(kept, fmt, dropped)
    raise PolypsslError(f"unknown checkpoint format {fmt!r}; valid formats: auto, {', '.join(SOURCE_FORMATS)}")


def describe_dropped(dropped: Mapping[str, int]) -> str:
    return ", ".join(f"{prefix}* ({n})" for prefix, n in sorted(dropped.items())) or "nothing"

"""Weight specs: parse them, describe them, and turn each one into an exact encoder state dict.

Every path ends in :func:`align_state_dict`, which accepts a state dict only when its keys and shapes are
exactly the encoder's (torchvision / timm names, no classifier). The only change it makes is resampling a
ViT position embedding to another patch grid, and it logs that.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polypssl.backbones.formats import (
    METHOD_OF_FORMAT,
    POLYPSSL_FORMAT,
    Checkpoint,
    Extracted,
    describe_dropped,
    detect_format,
    extract_encoder,
    family_of_keys,
    is_safetensors_file,
    read_checkpoint,
    read_safetensors_header,
)
from polypssl.backbones.models import build_encoder, check_image_size, encoder_shapes
from polypssl.backbones.registry import BACKBONES, backbone_info
from polypssl.errors import PolypsslError

logger = logging.getLogger(__name__)

SPEC_FORMS = "random, supervised[:TAG], file:PATH, mocov3:PATH, mae:PATH, barlowtwins:PATH, auto:PATH"
PATH_KINDS = ("file", "mocov3", "mae", "barlowtwins", "auto")
PRETRAIN_METHODS = ("mocov3", "barlowtwins", "mae", "supervised", "none")
#: Pretraining whose ViTs use the fixed 2-D sin-cos position embedding (kept fixed when loaded).
SINCOS_METHODS = ("mocov3", "mae")
#: timm tags that are not supervised pretraining and so must not be labelled ``supervised``.
_NOT_SUPERVISED_TAGS = {"mae": "the MAE release: pass it as mae:PATH", "dino": "DINO self-supervised weights"}
_MAX_LISTED = 10


# ------------------------------------------------------------------------------------------------ specs


@dataclass(frozen=True)
class WeightSpec:
    """A parsed weight spec: ``kind`` plus a ``tag`` (supervised) or a ``path`` (file-based kinds)."""

    kind: str
    tag: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.kind}:{self.path}"
        return f"{self.kind}:{self.tag}" if self.tag else self.kind


def parse_weights(spec: str) -> WeightSpec:
    """Parse ``random``, ``supervised[:TAG]`` or ``KIND:PATH``; anything else lists the valid forms."""
    if isinstance(spec, WeightSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise PolypsslError(f"weights spec must be a non-empty string, got {spec!r}; valid forms: {SPEC_FORMS}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if kind == "random" and not sep:
        return WeightSpec("random")
    if kind == "supervised":
        if sep and not rest:
            raise PolypsslError(f"weights {spec!r}: empty tag; write 'supervised' or 'supervised:TAG'")
        return WeightSpec("supervised", tag=rest or None)
    if kind in PATH_KINDS and sep:
        if not rest:
            raise PolypsslError(f"weights {spec!r}: missing path after '{kind}:'")
        return WeightSpec(kind, path=Path(rest).expanduser())
    raise PolypsslError(f"unknown weights spec {spec!r}; valid forms: {SPEC_FORMS}")


def _description(spec: str, method: str, data: str) -> dict[str, str]:
    return {"weights": spec, "pretrain_method": method, "pretrain_data": data}


def describe_weights(spec: str) -> dict[str, str]:
    """``weights``, ``pretrain_method`` and ``pretrain_data`` of a spec, reading headers only when possible.

    Official releases and supervised weights are ImageNet (``IN``); ``file:`` reads the metadata that
    :func:`save_backbone` wrote. Only ``auto:`` of a pickled checkpoint has to read the file to see its keys.
    """
    parsed = parse_weights(spec)
    if parsed.kind == "random":
        return _description(spec, "none", "none")
    if parsed.kind == "supervised":
        return _description(spec, "supervised", "IN")
    if parsed.kind in METHOD_OF_FORMAT:
        return _description(spec, METHOD_OF_FORMAT[parsed.kind], "IN")
    path = parsed.path
    if parsed.kind == "file":
        return _description(spec, *_polypssl_metadata(path)[1:])
    # auto: safetensors headers answer without tensors; a pickle has to be read to see its keys.
    if path.is_file() and is_safetensors_file(path):
        keys, metadata = read_safetensors_header(path)
        if metadata.get("format") == POLYPSSL_FORMAT:
            return _description(spec, *_polypssl_metadata(path)[1:])
        ckpt = Checkpoint(path, dict.fromkeys(keys, torch.empty(0)), metadata, is_safetensors=True)
    else:
        ckpt = read_checkpoint(path)
    return _description(spec, METHOD_OF_FORMAT[detect_format(ckpt)], "IN")


def _polypssl_metadata(path: Path) -> tuple[str, str, str]:
    """(arch, pretrain_method, pretrain_data) from a polypssl backbone file's header."""
    if not Path(path).is_file():
        raise PolypsslError(f"backbone file {path} does not exist")
    if not is_safetensors_file(Path(path)):
        raise PolypsslError(
            f"{path} is not a safetensors file; file:PATH is for polypssl backbone files. Convert official "
            "checkpoints with `polypssl convert`, or pass mocov3:/mae:/barlowtwins:/auto:PATH"
        )
    _, metadata = read_safetensors_header(path)
    if metadata.get("format") != POLYPSSL_FORMAT:
        raise PolypsslError(
            f"{path} is not a polypssl backbone file (no format={POLYPSSL_FORMAT} in its metadata); convert it "
            "with `polypssl convert SRC DEST.safetensors` or pass it as auto:PATH"
        )
    missing = [k for k in ("arch", "pretrain_method", "pretrain_data") if k not in metadata]
    if missing:
        raise PolypsslError(f"{path}: backbone metadata lacks {', '.join(missing)}; re-save it with save_backbone")
    return metadata["arch"], metadata["pretrain_method"], metadata["pretrain_data"]


# ------------------------------------------------------------------------------------- strict checking


def _listed(items: list[str]) -> str:
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f" (+{more} more)" if more > 0 else "")


def vit_grid_of(sd: Mapping[str, torch.Tensor], num_prefix_tokens: int = 1) -> int | None:
    """Side of the square patch grid a ViT state dict's position embedding was made for."""
    pos = sd.get("pos_embed")
    if pos is None or pos.ndim != 3:
        return None
    side = math.isqrt(pos.shape[1] - num_prefix_tokens)
    return side if side * side == pos.shape[1] - num_prefix_tokens else None


def native_image_size(arch: str, sd: Mapping[str, torch.Tensor]) -> int:
    """The input size a state dict was made for (224 for ResNets; from the pos-embed grid for ViTs)."""
    info = backbone_info(arch)
    side = vit_grid_of(sd) if info.family == "vit" else None
    return side * info.patch_size if side else 224


def infer_arch(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The registered encoder whose keys and shapes match ``sd`` (the pos-embed grid may differ)."""
    family = family_of_keys(sd)
    for arch, info in BACKBONES.items():
        if info.family != family:
            continue
        ref = encoder_shapes(arch, 224)
        if set(ref) - {k for k in ref if k.endswith("num_batches_tracked")} <= set(sd) <= set(ref) and all(
            tuple(sd[k].shape) == shape for k, shape in ref.items() if k in sd and k != "pos_embed"
        ):
            return arch
    return None


def align_state_dict(
    arch: str, sd: Mapping[str, torch.Tensor], image_size: int = 224, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Check ``sd`` against the encoder ``arch`` strictly; resample a ViT pos-embed to ``image_size``.

    Missing or unexpected keys and shape mismatches are one error that lists them. BatchNorm's
    ``num_batches_tracked`` counters, absent from older torchvision files, are filled with zeros as
    ``torch.nn.BatchNorm`` itself does.
    """
    info = backbone_info(arch)
    check_image_size(info, image_size)
    ref = encoder_shapes(arch, image_size)
    sd = dict(sd)
    for key in ref:
        if key not in sd and key.endswith("num_batches_tracked") and key[:-19] + "running_mean" in sd:
            sd[key] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    mismatched = []
    for key, shape in ref.items():
        if key not in sd or tuple(sd[key].shape) == shape:
            continue
        if key == "pos_embed" and info.family == "vit":
            resampled = _resample_pos_embed(info.arch, sd[key], shape, source)
            if resampled is not None:
                sd[key] = resampled
                continue
        mismatched.append(f"{key} {tuple(sd[key].shape)} (encoder {shape})")
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listed(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} with the wrong shape: {_listed(mismatched)}")
        guess = infer_arch(sd)
        hint = f" It looks like a {guess} state dict." if guess and guess != arch else ""
        raise PolypsslError(
            f"{source} does not fit encoder {arch} ({info.model_name}): {'; '.join(parts)}.{hint} "
            "Check the arch and the format prefix (mocov3:/mae:/barlowtwins:/file:); only known heads "
            "(projector, predictor, momentum encoder, decoder, mask_token, fc, head, bn) are ever dropped."
        )
    return {k: sd[k] for k in ref}


def _resample_pos_embed(
    arch: str, pos: torch.Tensor, shape: tuple[int, ...], source: str
) -> torch.Tensor | None:
    """timm's resampling to the new grid when both grids are square with one cls token, else None."""
    from timm.layers import resample_abs_pos_embed

    if pos.ndim != 3 or pos.shape[-1] != shape[-1]:
        return None
    old, new = math.isqrt(pos.shape[1] - 1), math.isqrt(shape[1] - 1)
    if old * old != pos.shape[1] - 1 or new * new != shape[1] - 1:
        return None
    out = resample_abs_pos_embed(pos.float(), [new, new], [old, old], num_prefix_tokens=1).to(pos.dtype)
    logger.info(
        "%s: %s position embedding interpolated from a %dx%d to a %dx%d patch grid (bicubic, cls token kept)",
        source, arch, old, old, new, new,
    )
    return out


def _log_dropped(source: str, ex: Extracted) -> None:
    logger.info(
        "%s (%s): kept %d encoder tensors, dropped %d: %s",
        source, ex.fmt, len(ex.state_dict), ex.num_dropped, describe_dropped(ex.dropped),
    )


def _check_family(arch: str, sd: Mapping[str, Any], source: str) -> None:
    info = backbone_info(arch)
    family = family_of_keys(sd)
    if family is not None and family != info.family:
        raise PolypsslError(
            f"{source} holds {family} weights but encoder {arch} is a {info.family}; pick a {family} encoder "
            f"({', '.join(a for a, i in BACKBONES.items() if i.family == family)})"
        )


# ---------------------------------------------------------------------------------------------- loading


def resolve_weights(
    arch: str, weights: str, image_size: int = 224
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(encoder state dict, :func:`describe_weights`-style description), reading each file once."""
    info = backbone_info(arch)
    check_image_size(info, image_size)
    spec = parse_weights(weights)
    text = weights if isinstance(weights, str) else str(spec)
    if spec.kind == "random":
        return build_encoder(arch, image_size).state_dict(), _description(text, "none", "none")
    if spec.kind == "supervised":
        path, label = fetch_supervised(arch, spec.tag)
        ckpt = read_checkpoint(path)
        ex = extract_encoder(ckpt, "torchvision" if info.family == "resnet" else "timm", info.family)
        _log_dropped(label, ex)
        return align_state_dict(arch, ex.state_dict, image_size, label), _description(text, "supervised", "IN")
    ckpt = read_checkpoint(spec.path)
    source = str(spec.path)
    fmt = spec.kind
    if fmt == "auto":
        fmt = detect_format(ckpt)
        logger.info("%s: detected format %s", source, fmt)
    if fmt in ("file", "polypssl"):
        file_arch, method, data = _polypssl_metadata(spec.path)
        if file_arch != arch:
            raise PolypsslError(
                f"{source} holds a {file_arch} backbone but encoder {arch} was requested; "
                f"use encoder {file_arch} or a file saved for {arch}"
            )
        ex = extract_encoder(ckpt, "polypssl", info.family)
        return align_state_dict(arch, ex.state_dict, image_size, source), _description(text, method, data)
    ex = extract_encoder(ckpt, fmt, info.family)
    _check_family(arch, ex.state_dict, source)
    _log_dropped(source, ex)
    sd = align_state_dict(arch, ex.state_dict, image_size, source)
    return sd, _description(text, METHOD_OF_FORMAT[fmt], "IN")


def load_encoder_state_dict(arch: str, weights: str, image_size: int = 224) -> dict[str, torch.Tensor]:
    """Encoder weights in torchvision / timm names (no fc / head), ViT pos-embed at ``image_size``.

    Loads strictly into ``torchvision.models.<resnet>()`` with ``fc`` removed, into
    segmentation_models_pytorch's ResNet encoders, and into timm ViTs built with ``num_classes=0``.
    """
    return resolve_weights(arch, weights, image_size)[0]


# ----------------------------------------------------------------------------------- supervised weights


@dataclass(frozen=True)
class SupervisedSource:
    """Where one supervised weight file comes from and where polypssl looks for it locally."""

    arch: str
    tag: str
    name: str  # e.g. ResNet50_Weights.IMAGENET1K_V1 or vit_base_patch16_224.augreg_in21k_ft_in1k
    url: str
    filename: str
    repo_id: str | None = None  # set for weights on the Hugging Face Hub (timm)

    @property
    def cache_hint(self) -> str:
        if self.repo_id:
            return f"the Hugging Face cache ({hf_cache_dir()}; set by HF_HOME or HF_HUB_CACHE)"
        return f"{torch_hub_checkpoints() / self.filename} (directory set by TORCH_HOME)"


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    """The Hub cache, read from the environment at call time (the Hub library reads it once at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(constants.HF_HUB_CACHE)


def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT


def _offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("POLYPSSL_OFFLINE", "HF_HUB_OFFLINE")
    )


def _download_timeout() -> float:
    return float(os.environ.get("POLYPSSL_DOWNLOAD_TIMEOUT", "15"))


def supervised_source(arch: str, tag: str | None = None) -> SupervisedSource:
    """Resolve ``supervised[:TAG]`` for ``arch`` to a file, checking the tag against the library's list."""
    info = backbone_info(arch)
    tag = tag or info.supervised_default
    if info.family == "resnet":
        import torchvision

        enum = torchvision.models.get_model_weights(info.model_name)
        valid = [name for name in enum.__members__ if name != "DEFAULT"]
        if tag not in enum.__members__:
            raise PolypsslError(f"supervised tag {tag!r} does not exist for {arch}; valid tags: {', '.join(valid)}")
        member = enum[tag]
        url = member.url
        filename = url.rsplit("/", 1)[-1]
        mirror = os.environ.get("POLYPSSL_TORCHVISION_MIRROR", "").rstrip("/")
        if mirror:
            url = f"{mirror}/{filename}"
        return SupervisedSource(arch, member.name, f"{enum.__name__}.{member.name}", url, filename)

    import timm
    from huggingface_hub import hf_hub_url
    from timm.models import get_pretrained_cfg

    valid = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{info.model_name}.*")]
    if tag in _NOT_SUPERVISED_TAGS:
        raise PolypsslError(f"timm tag {tag!r} for {arch} is not supervised pretraining ({_NOT_SUPERVISED_TAGS[tag]})")
    if tag not in valid:
        raise PolypsslError(f"supervised tag {tag!r} does not exist for {arch}; valid timm tags: {', '.join(valid)}")
    name = f"{info.model_name}.{tag}"
    cfg = get_pretrained_cfg(name)
    if cfg.hf_hub_id:
        filename = cfg.hf_hub_filename or "model.safetensors"
        url = hf_hub_url(cfg.hf_hub_id, filename, endpoint=_hf_endpoint())
        return SupervisedSource(arch, tag, name, url, filename, repo_id=cfg.hf_hub_id)
    return SupervisedSource(arch, tag, name, cfg.url, cfg.url.rsplit("/", 1)[-1])


def _cached(src: SupervisedSource) -> Path | None:
    if src.repo_id:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(src.repo_id, src.filename, cache_dir=hf_cache_dir())
        return Path(found) if isinstance(found, str) else None
    path = torch_hub_checkpoints() / src.filename
    return path if path.is_file() else None


def _guidance(src: SupervisedSource, reason: str) -> PolypsslError:
    stem = src.filename.rsplit(".", 1)[0]
    fmt = "torchvision" if backbone_info(src.arch).family == "resnet" else "timm"
    fetch = (
        f"`hf download {src.repo_id} {src.filename}` (or {src.url})" if src.repo_id else src.url
    )
    return PolypsslError(
        f"supervised weights {src.name} for {src.arch} are not cached locally and cannot be downloaded "
        f"({reason}). On a machine with internet, fetch {fetch} and either put it in {src.cache_hint}, or run "
        f"`polypssl convert {src.filename} {stem}.safetensors --format {fmt} --arch {src.arch}` and pass "
        f"weights=file:{stem}.safetensors (or weights=auto:PATH/{src.filename} directly)."
    )


def _probe(url: str, timeout: float) -> None:
    """One HEAD request with a short timeout, so that no network fails in seconds, not minutes of retries."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # the server answered; the download itself will report what is wrong


def fetch_supervised(arch: str, tag: str | None = None) -> tuple[Path, str]:
    """Local path of the supervised weight file (downloading it when allowed), and a label for logs."""
    src = supervised_source(arch, tag)
    label = f"supervised {src.name}"
    cached = _cached(src)
    if cached is not None:
        logger.info("%s: using cached %s", label, cached)
        return cached, label
    if _offline():
        raise _guidance(src, "offline mode: POLYPSSL_OFFLINE or HF_HUB_OFFLINE is set")
    timeout = _download_timeout()
    try:
        _probe(src.url, timeout)
        logger.info("%s: downloading %s", label, src.url)
        if src.repo_id:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(
                src.repo_id, src.filename, cache_dir=hf_cache_dir(), endpoint=_hf_endpoint(), etag_timeout=timeout
            )
            return Path(path), label
        dest = torch_hub_checkpoints() / src.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        match = re.search(r"-([a-f0-9]{6,})\.", src.filename)
        # torch.hub's download has no timeout argument; the socket default bounds every blocking read.
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(max(timeout, 60.0))
        try:
            torch.hub.download_url_to_file(src.url, str(dest), hash_prefix=match.group(1) if match else None)
        finally:
            socket.setdefaulttimeout(previous)
        return dest, label
    except PolypsslError:
        raise
    except Exception as err:  # any network or hub failure ends in the same guidance
        raise _guidance(src, f"{type(err).__name__}: {err}".splitlines()[0][:200]) from err


# ----------------------------------------------------------------------------------------------- saving


def save_backbone(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    arch: str,
    method: str,
    data: str,
    **extra_metadata: Any,
) -> None:
    """Write encoder weights as safetensors (atomically) with the metadata ``file:`` loading relies on.

    The state dict must be exactly the encoder's (torchvision / timm names, no fc / head); a ViT keeps the
    patch grid it was trained at.
    """
    from polypssl import __version__
    from polypssl.runs import save_safetensors

    backbone_info(arch)
    if method not in PRETRAIN_METHODS:
        raise PolypsslError(f"pretrain method {method!r} is not one of {', '.join(PRETRAIN_METHODS)}")
    if not isinstance(data, str) or not data.strip():
        raise PolypsslError(f"pretrain data must be a name such as HK, IN or a dataset name, got {data!r}")
    reserved = {"format", "arch", "pretrain_method", "pretrain_data"} & set(extra_metadata)
    if reserved:
        raise PolypsslError(f"save_backbone: metadata keys {', '.join(sorted(reserved))} are set by polypssl")
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    sd = align_state_dict(arch, sd, native_image_size(arch, sd), source=f"save_backbone({path})")
    metadata = {
        "format": POLYPSSL_FORMAT,
        "arch": arch,
        "pretrain_method": method,
        "pretrain_data": data,
        "polypssl_version": __version__,
        **{k: str(v) for k, v in extra_metadata.items()},
    }
    save_safetensors(sd, path, metadata)
    logger.info("saved %s backbone (%s, %s) to %s", arch, method, data, path)


__all__ = [
    "PRETRAIN_METHODS",
    "SPEC_FORMS",
    "SupervisedSource",
    "WeightSpec",
    "align_state_dict",
    "describe_weights",
    "fetch_supervised",
    "infer_arch",
    "load_encoder_state_dict",
    "native_image_size",
    "parse_weights",
    "resolve_weights",
    "save_backbone",
    "supervised_source",
]

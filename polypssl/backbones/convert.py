"""``polypssl convert SRC DEST.safetensors``: an official or torchvision/timm checkpoint as encoder safetensors.

The output has torchvision / timm key names and nothing but the encoder, so it loads into plain
``torchvision.models.resnet50()`` / ``timm.create_model("vit_base_patch16_224")`` with only the classifier
missing, and into polypssl as ``file:DEST``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from polypssl.backbones.formats import (
    METHOD_OF_FORMAT,
    SOURCE_FORMATS,
    describe_dropped,
    detect_format,
    extract_encoder,
    family_of_keys,
    read_checkpoint,
    tensor_dict,
)
from polypssl.backbones.registry import backbone_info, list_backbones
from polypssl.backbones.weights import align_state_dict, infer_arch, native_image_size, save_backbone
from polypssl.errors import PolypsslError
from polypssl.runs import sha256_file


@dataclass
class ConvertResult:
    """What a conversion kept, dropped and wrote."""

    dest: Path
    arch: str
    fmt: str
    method: str
    data: str
    kept: int
    num_values: int
    dropped: dict[str, int] = field(default_factory=dict)


def convert_checkpoint(
    src: str | Path, dest: str | Path, fmt: str = "auto", arch: str | None = None, data: str | None = None
) -> ConvertResult:
    """Read ``src`` safely, keep the encoder strictly, write ``dest`` with provenance metadata."""
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    if dest.suffix != ".safetensors":
        raise PolypsslError(f"output {dest} must end in .safetensors")
    if fmt != "auto" and fmt not in SOURCE_FORMATS:
        raise PolypsslError(f"unknown format {fmt!r}; valid formats: auto, {', '.join(SOURCE_FORMATS)}")
    ckpt = read_checkpoint(src)
    if fmt == "auto":
        fmt = detect_format(ckpt)
    if fmt == "polypssl":
        arch = arch or ckpt.metadata.get("arch")
        method = ckpt.metadata.get("pretrain_method", "none")
        data = data or ckpt.metadata.get("pretrain_data", "none")
    else:
        method = METHOD_OF_FORMAT[fmt]
        data = data or "IN"
    if arch is not None:
        family = backbone_info(arch).family
    else:
        family = family_of_keys(tensor_dict(ckpt, wrappers=("state_dict", "model"))[0])
        if family is None:
            raise PolypsslError(f"{src}: cannot tell whether this is a ResNet or a ViT; pass --arch")
    extracted = extract_encoder(ckpt, fmt, family)
    if arch is None:
        arch = infer_arch(extracted.state_dict)
        if arch is None:
            raise PolypsslError(
                f"{src}: the encoder weights match none of {', '.join(list_backbones())}; pass --arch to see "
                "which keys differ"
            )
    state_dict = align_state_dict(arch, extracted.state_dict, native_image_size(arch, extracted.state_dict), str(src))
    if fmt == "polypssl":
        reserved = {"format", "arch", "pretrain_method", "pretrain_data"}
        extra = {k: v for k, v in ckpt.metadata.items() if k not in reserved}
        if "source_sha256" not in extra:
            extra["source_sha256"] = sha256_file(src)
    else:
        extra = {"source_file": src.name, "source_format": fmt, "source_sha256": sha256_file(src)}
    save_backbone(state_dict, dest, arch=arch, method=method, data=data, **extra)
    return ConvertResult(
        dest, arch, fmt, method, data, len(state_dict), sum(t.numel() for t in state_dict.values()),
        extracted.dropped,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint to convert (.pth, .pth.tar, .bin or .safetensors)")
    parser.add_argument("dest", help="output file, DEST.safetensors")
    parser.add_argument(
        "--format", default="auto", choices=("auto", *SOURCE_FORMATS),
        help="layout of SRC (default: detected from its keys)",
    )
    parser.add_argument("--arch", choices=list_backbones(), help="encoder (default: inferred from shapes)")
    parser.add_argument(
        "--data", default=None, help="pretraining data recorded in the metadata (default IN: ImageNet)"
    )


def run(args: argparse.Namespace) -> int:
    result = convert_checkpoint(args.src, args.dest, args.format, args.arch, args.data)
    print(f"format {result.fmt}: {result.arch} encoder, pretrain_method={result.method}, pretrain_data={result.data}")
    print(f"kept {result.kept} tensors ({result.num_values:,} values)")
    print(f"dropped {sum(result.dropped.values())} tensors: {describe_dropped(result.dropped)}")
    print(f"wrote {result.dest}")
    return 0

"""The paper's short model labels (``RN-IN-MC``, ``VT-NA-NA``) and its row order.

Labels are ``<encoder>-<pretraining data>-<pretraining method>``: RN/VT, HK/IN/NA and
MC/BT/MA/SL/NA. Names the paper never used fall back to an upper-cased short form, so a study
with other encoders or data still gets readable, distinct labels.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

NONE_NAMES = {"", "none", "na", "null", "random", "scratch"}

DATA_CODES = {
    "hk": "HK", "hyperkvasir": "HK", "hyperkvasir-unlabelled": "HK", "hyperkvasir-unlabeled": "HK",
    "in": "IN", "imagenet": "IN", "imagenet-1k": "IN", "imagenet1k": "IN", "in1k": "IN",
}
METHOD_CODES = {
    "mocov3": "MC", "moco-v3": "MC", "moco_v3": "MC", "mc": "MC",
    "barlowtwins": "BT", "barlow-twins": "BT", "barlow_twins": "BT", "bt": "BT",
    "mae": "MA", "ma": "MA",
    "supervised": "SL", "sl": "SL",
}
# Paper order: RN before VT; HK, IN, then none; MoCo v3, then BT/MAE, supervised, none.
ENCODER_ORDER = {"RN": 0, "VT": 1}
DATA_ORDER = {"HK": 0, "IN": 1, "NA": 9}
METHOD_ORDER = {"MC": 0, "BT": 1, "MA": 1, "SL": 8, "NA": 9}

ENCODER_NAMES = {"RN": "ResNet50", "VT": "ViT-B"}
METHOD_NAMES = {"MC": "MoCo v3", "BT": "BT", "MA": "MAE", "SL": "Supervised", "NA": "None"}
DATA_NAMES = {"HK": "HK", "IN": "IN", "NA": "None"}


def _fallback(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", name).upper() or "NA"


def encoder_code(encoder: str) -> str:
    """``resnet*`` -> RN, ``vit*`` -> VT, anything else its name upper-cased."""
    low = str(encoder).lower()
    if low.startswith("resnet"):
        return "RN"
    if low.startswith("vit"):
        return "VT"
    return _fallback(str(encoder))


def data_code(data: Any) -> str:
    low = "" if data is None else str(data).strip().lower()
    if low in NONE_NAMES:
        return "NA"
    return DATA_CODES.get(low, _fallback(str(data)))


def method_code(method: Any) -> str:
    low = "" if method is None else str(method).strip().lower()
    if low in NONE_NAMES:
        return "NA"
    return METHOD_CODES.get(low, _fallback(str(method)))


def model_label(info: Mapping[str, Any]) -> str:
    """Label for one run from its ``run.json``: its own ``label`` if it has one, else the paper's code."""
    if info.get("label"):
        return str(info["label"])
    return "-".join(
        (encoder_code(info["encoder"]), data_code(info.get("pretrain_data")), method_code(info.get("pretrain_method")))
    )


def sort_key(info: Mapping[str, Any]) -> tuple:
    """Row order of the paper's Table 1; unknown codes go after known ones, alphabetically."""
    enc = encoder_code(info["encoder"])
    data = data_code(info.get("pretrain_data"))
    method = method_code(info.get("pretrain_method"))
    return (
        ENCODER_ORDER.get(enc, 5), enc,
        DATA_ORDER.get(data, 5), data,
        METHOD_ORDER.get(method, 5), method,
    )


def disambiguate(labels: Sequence[str]) -> list[str]:
    """Make labels unique: every label used more than once gets ``#1``, ``#2``, ... in order."""
    counts = Counter(labels)
    seen: Counter[str] = Counter()
    out = []
    for label in labels:
        if counts[label] > 1:
            seen[label] += 1
            out.append(f"{label}#{seen[label]}")
        else:
            out.append(label)
    return out


def encoder_display(encoder: str) -> str:
    code = encoder_code(encoder)
    if code in ENCODER_NAMES and str(encoder).lower() in {"resnet50", "vit_b16", "vit_base_patch16_224"}:
        return ENCODER_NAMES[code]
    return str(encoder)


def data_display(data: Any) -> str:
    code = data_code(data)
    return DATA_NAMES.get(code, str(data))


def method_display(method: Any) -> str:
    code = method_code(method)
    return METHOD_NAMES.get(code, str(method))

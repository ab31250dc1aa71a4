"""Synthetic polyp domains in the real datasets' on-disk layouts.

Three folders come out of one call: a Kvasir-like labelled set (JPEG frames of varied size,
JPEG masks), a clinic-like labelled set in CVC-ClinicDB's layout (384x288 TIFF, ``Ground Truth``)
and a Kvasir-like unlabelled set. Frames are rendered with numpy from smooth noise: pink-red
mucosa with vessels, haustral folds around a dark lumen, vignetting and dark corners, specular
highlights; polyps are raised domes with a lobulated outline, Lambertian shading, a cast shadow
at the base and their own surface texture, in the mucosa's hue family.

The clinic-like domain differs systematically: warmer colour balance, lower contrast, a fixed
lower resolution, optical blur, sensor noise, smaller polyps whose colour is closer to the
mucosa, and a black border, so a model trained on the Kvasir-like set loses accuracy on it.

Every frame draws from its own generator seeded by (seed, domain, index), so the output is the
same for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from polypssl.errors import PolypsslError

GENERATOR_VERSION = 2
MARKER = ".polypssl-synth.json"
DOMAINS = ("kvasir-seg", "cvc-clinicdb", "hyperkvasir-unlabelled")
_DOMAIN_CODE = {name: i + 1 for i, name in enumerate(DOMAINS)}


@dataclass(frozen=True)
class Scale:
    kvasir: int
    cvc: int
    unlabelled: int
    min_side: int  # range of the longer side of Kvasir-like / unlabelled frames
    max_side: int


SCALES = {
    "small": Scale(kvasir=200, cvc=120, unlabelled=400, min_side=160, max_side=400),
    "tiny": Scale(kvasir=12, cvc=10, unlabelled=12, min_side=96, max_side=160),  # unit tests
    "full": Scale(kvasir=1000, cvc=612, unlabelled=3000, min_side=320, max_side=640),
}


# ----------------------------------------------------------------------------- rendering


def _noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3) -> np.ndarray:
    """Smooth noise with unit-ish amplitude: bicubic-upsampled Gaussian grids, several octaves."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        out += amp * np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC))
        total += amp
        amp *= 0.5
        cell = max(2.0, cell / 2)
    return out / total


def _frame_size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    long_side = int(rng.integers(lo, hi + 1))
    aspect = float(rng.choice([4 / 3, 5 / 4, 16 / 10, 16 / 9]))
    return max(32, int(round(long_side / aspect))), long_side  # (h, w), landscape like endoscopy video


def _polyp_params(rng: np.random.Generator, h: int, w: int, clinic: bool) -> dict:
    m = min(h, w)
    # Sizes from tiny to large: beta-skewed radius as a fraction of the shorter side.
    frac = (0.04 + 0.2 * rng.beta(1.2, 2.0)) if clinic else (0.035 + 0.32 * rng.beta(1.2, 2.2))
    return {
        "cy": rng.uniform(0.15, 0.85) * h,
        "cx": rng.uniform(0.15, 0.85) * w,
        "r": max(3.0, frac * m),
        "aspect": rng.uniform(0.7, 1.3),
        "angle": rng.uniform(0, np.pi),
        "harm": rng.normal(0, 0.09, 4) * np.array([1.0, 0.8, 0.5, 0.3]),
        "phase": rng.uniform(0, 2 * np.pi, 4),
        "height": rng.uniform(0.6, 1.4),
        "flat": rng.uniform(0.5, 1.0),  # dome exponent: smaller = flatter top
        "tint": rng.uniform(-0.07, 0.07, 3) + (np.array([0.02, 0.0, -0.02]) if clinic else np.array([0.06, -0.04, 0.0])),
        "texture": rng.uniform(0.04, 0.12),
        "ring": rng.uniform(0.0, 0.12 if clinic else 0.2),
    }


def _render(rng: np.random.Generator, h: int, w: int, n_polyps: int, clinic: bool) -> tuple[np.ndarray, np.ndarray]:
    """One frame: float RGB in [0, 1] (h, w, 3) and a bool polyp mask."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    m = float(min(h, w))

    # Colour balance of the domain and of this frame.
    if clinic:
        base = np.array([0.86, 0.48, 0.31], np.float32) * rng.uniform(0.9, 1.05, 3).astype(np.float32)
    else:
        base = np.array([0.82, 0.40, 0.36], np.float32) * rng.uniform(0.88, 1.08, 3).astype(np.float32)

    # Lumen (dark, far away) and haustral folds: rings around it warped by noise.
    ly, lx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    dist = np.hypot(yy - ly, xx - lx) / m
    warp = _noise(rng, h, w, m / 3, octaves=2)
    depth = 1.0 - np.exp(-((dist / rng.uniform(0.12, 0.3)) ** 2))
    phase = dist * rng.uniform(10, 22) + 1.5 * warp
    fold_strength = np.clip(0.5 + _noise(rng, h, w, m / 2, octaves=1), 0, 1) * rng.uniform(0.5, 1.0)
    ridge = (0.5 + 0.5 * np.cos(phase)) ** 3
    shadow = (0.5 + 0.5 * np.cos(phase - 1.2)) ** 4
    shade = 0.25 + 0.75 * depth
    shade *= 1.0 + fold_strength * (0.15 * ridge - 0.3 * shadow)

    # Mucosa texture and vessels (thin lines where smooth noise crosses zero).
    fine = _noise(rng, h, w, max(3.0, m / 40), octaves=2)
    vessel_field = _noise(rng, h, w, max(4.0, m / 12), octaves=2)
    vessels = np.exp(-((vessel_field / 0.035) ** 2)) * rng.uniform(0.2, 0.5)
    rgb = base[None, None, :] * (1.0 + 0.06 * fine)[..., None]
    rgb = rgb * (1.0 - vessels[..., None] * np.array([0.15, 0.55, 0.5], np.float32))

    mask = np.zeros((h, w), bool)
    height = np.zeros((h, w), np.float32)
    spec_sharp = float(rng.uniform(30, 80))
    lightx, lighty = rng.normal(0, 0.35, 2)
    for _ in range(n_polyps):
        p = _polyp_params(rng, h, w, clinic)
        r = p["r"]
        pad = int(1.6 * r * 1.5) + 2
        y0, y1 = max(0, int(p["cy"]) - pad), min(h, int(p["cy"]) + pad)
        x0, x1 = max(0, int(p["cx"]) - pad), min(w, int(p["cx"]) + pad)
        if y1 <= y0 or x1 <= x0:
            continue
        dy, dx = yy[y0:y1, x0:x1] - p["cy"], xx[y0:y1, x0:x1] - p["cx"]
        ca, sa = np.cos(p["angle"]), np.sin(p["angle"])
        u, v = (ca * dx + sa * dy), (-sa * dx + ca * dy) * p["aspect"]
        theta = np.arctan2(v, u)
        outline = 1.0 + sum(p["harm"][k] * np.cos((k + 2) * theta + p["phase"][k]) for k in range(4))
        rho = np.hypot(u, v) / (r * outline)
        inside = rho < 1.0
        dome = np.clip(1.0 - rho**2, 0, 1) ** p["flat"] * p["height"] * r / m * 6
        # Lobulated surface: the polyp's own bumps, visible in the shading.
        bumps = _noise(rng, y1 - y0, x1 - x0, max(2.0, r / 3), octaves=2)
        dome = dome * (1.0 + p["texture"] * bumps)
        height[y0:y1, x0:x1] = np.maximum(height[y0:y1, x0:x1], dome)
        # Shadow ring just outside the base, offset away from the light.
        ring = np.clip(1.0 - np.abs(rho - 1.08) / 0.12, 0, 1) * (~inside)
        shade[y0:y1, x0:x1] *= 1.0 - p["ring"] * ring
        tint = 1.0 + p["tint"].astype(np.float32) * inside[..., None]
        alpha = np.clip((1.0 - rho) * r / 1.5, 0, 1)[..., None]  # ~1.5 px soft edge
        rgb[y0:y1, x0:x1] = rgb[y0:y1, x0:x1] * (1 - alpha) + rgb[y0:y1, x0:x1] * tint * alpha
        mask[y0:y1, x0:x1] |= inside

    # Lambertian shading of the polyp domes plus their specular highlights (inside their bounding box).
    spec_extra = None
    if height.any():
        ys, xs = np.nonzero(height)
        y0, y1, x0, x1 = max(0, ys.min() - 1), ys.max() + 2, max(0, xs.min() - 1), xs.max() + 2
        hb = height[y0:y1, x0:x1]
        gy, gx = np.gradient(hb * m)
        norm = np.sqrt(gx**2 + gy**2 + 1.0)
        nx, ny, nz = -gx / norm, -gy / norm, 1.0 / norm
        ln = np.sqrt(lightx**2 + lighty**2 + 1.0)
        lambert = np.clip((nx * lightx + ny * lighty + nz) / ln, 0, 1)
        shade[y0:y1, x0:x1] *= np.where(hb > 0, 0.55 + 0.55 * lambert, 1.0)
        hz = 1.0 + ln
        half = np.clip((nx * lightx + ny * lighty + nz * hz) / np.sqrt(lightx**2 + lighty**2 + hz**2), 0, 1)
        spec_extra = (y0, y1, x0, x1, (half**spec_sharp) * (hb > 0.02))

    rgb = rgb * shade[..., None]

    # Specular highlights on wet mucosa: sparse peaks of fine noise, mostly on fold ridges.
    spec_field = _noise(rng, h, w, max(3.0, m / 30), octaves=1) + 0.8 * ridge * fold_strength
    thr = float(np.quantile(spec_field[:: 4, :: 4], rng.uniform(0.993, 0.999)))
    spec = np.clip((spec_field - thr) * 12, 0, 1) * depth
    if spec_extra is not None:
        y0, y1, x0, x1, extra = spec_extra
        spec[y0:y1, x0:x1] = np.clip(spec[y0:y1, x0:x1] + 0.9 * extra, 0, 1)
    spec = spec[..., None]
    rgb = rgb * (1 - spec) + spec * np.array([1.0, 0.98, 0.96], np.float32)

    # Vignetting and dark rounded corners of the endoscope's field of view.
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ell = np.hypot((yy - cy) / (h / 2), (xx - cx) / (w / 2))
    rr = ell / np.sqrt(2)
    vignette = 1.0 - rng.uniform(0.35, 0.6) * rr * rr * np.sqrt(rr)
    corner = np.clip((rng.uniform(1.2, 1.32) - ell) * m / 6, 0, 1)
    rgb *= (vignette * corner)[..., None]

    if clinic:
        # Lower contrast, a little sensor noise; blur and border are applied after quantisation.
        rgb = 0.12 + 0.78 * rgb + rng.normal(0, 0.012, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 1), mask


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _polyp_count(rng: np.random.Generator, unlabelled: bool) -> int:
    if unlabelled:
        return int(rng.choice([0, 1, 2, 3], p=[0.25, 0.55, 0.15, 0.05]))
    return int(rng.choice([1, 2, 3], p=[0.82, 0.14, 0.04]))


def render_frame(seed: int, domain: str, index: int, scale: str = "small") -> tuple[Image.Image, np.ndarray | None]:
    """The ``index``-th frame of ``domain`` for ``seed``: (RGB image, bool mask or None)."""
    sc = SCALES[scale]
    rng = np.random.default_rng([seed, _DOMAIN_CODE[domain], index])
    if domain == "cvc-clinicdb":
        h, w = 288, 384
        rgb, mask = _render(rng, h, w, _polyp_count(rng, False), clinic=True)
        img = Image.fromarray(_to_uint8(rgb)).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 1.6))))
        arr = np.asarray(img).copy()
        b = int(rng.integers(8, 18))  # black border of the clinic's video frame
        arr[:b], arr[-b:], arr[:, :b], arr[:, -b:] = 0, 0, 0, 0
        mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = False, False, False, False
        return Image.fromarray(arr), mask
    unlabelled = domain == "hyperkvasir-unlabelled"
    h, w = _frame_size(rng, sc.min_side, sc.max_side)
    rgb, mask = _render(rng, h, w, _polyp_count(rng, unlabelled), clinic=False)
    arr = _to_uint8(rgb)
    if rng.random() < 0.3:  # the scope-position inset some Kvasir frames carry, bottom left
        s = max(6, h // 6)
        arr[h - s - 4 : h - 4, 4 : 4 + s] = (30, 90, 40)
    return Image.fromarray(arr), (None if unlabelled else mask)


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write_frame(args: tuple[int, str, int, str, str]) -> None:
    seed, domain, index, scale, folder = args
    img, mask = render_frame(seed, domain, index, scale)
    root = Path(folder)
    if domain == "cvc-clinicdb":
        img.save(root / "Original" / f"{index + 1}.tif", compression="tiff_lzw")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "Ground Truth" / f"{index + 1}.tif", compression="tiff_lzw")
        return
    name = f"synth{seed:03d}{index:05d}{_DOMAIN_CODE[domain]}"
    (root / "images" / f"{name}.jpg").write_bytes(_jpeg_bytes(img, 90))
    if mask is not None:  # JPEG masks, as Kvasir-SEG ships them (edge values are not exactly 0/255)
        rgb_mask = Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB")
        (root / "masks" / f"{name}.jpg").write_bytes(_jpeg_bytes(rgb_mask, 90))


# ----------------------------------------------------------------------------- writing


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def synthesize(
    out: str | Path, seed: int = 0, scale: str = "small", *, workers: int | None = None, progress: bool = True
) -> dict[str, Path]:
    """Write the three synthetic datasets under ``out``; returns {dataset name: folder}.

    Frames are written into a temporary folder that is renamed into place; the marker file
    ``out/.polypssl-synth.json`` is written last, so an interrupted run never looks complete.
    """
    from tqdm.auto import tqdm

    from polypssl.runs import write_json

    if scale not in SCALES:
        raise PolypsslError(f"unknown synth scale {scale!r}; valid scales: {', '.join(SCALES)}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(out)
    for name in DOMAINS:
        if (out / name).exists() and marker is None:
            raise PolypsslError(
                f"{out / name} exists and was not written by `polypssl data synth`; choose another OUT folder"
            )
    sc = SCALES[scale]
    tmp = out / f".synth-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("kvasir-seg/images", "kvasir-seg/masks", "cvc-clinicdb/Original",
                "cvc-clinicdb/Ground Truth", "hyperkvasir-unlabelled/images"):
        (tmp / sub).mkdir(parents=True)
    jobs = [(seed, "kvasir-seg", i, scale, str(tmp / "kvasir-seg")) for i in range(sc.kvasir)]
    jobs += [(seed, "cvc-clinicdb", i, scale, str(tmp / "cvc-clinicdb")) for i in range(sc.cvc)]
    jobs += [(seed, "hyperkvasir-unlabelled", i, scale, str(tmp / "hyperkvasir-unlabelled")) for i in range(sc.unlabelled)]

    write_json(out / MARKER, {"status": "writing", "seed": seed, "scale": scale, "version": GENERATOR_VERSION})
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"synth {scale}", unit="frame", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                _write_frame(job)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_write_frame, jobs, chunksize=8):
                    bar.update()
    finally:
        bar.close()
    paths = {}
    for name in DOMAINS:
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
        paths[name] = target
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {"kvasir-seg": sc.kvasir, "cvc-clinicdb": sc.cvc, "hyperkvasir-unlabelled": sc.unlabelled}
    write_json(out / MARKER, {
        "status": "complete", "seed": seed, "scale": scale, "version": GENERATOR_VERSION,
        "counts": counts, "seconds": round(time.perf_counter() - start, 2),
    })
    return paths


def is_synthetic(root: str | Path) -> bool:
    """True when ``root`` (a dataset folder or the synth output folder) was written by synthesize."""
    root = Path(root)
    return any(_read_marker(p) is not None for p in (root, root.parent, root.parent.parent))


def ensure_synthetic(out: str | Path, seed: int = 0, scale: str = "small", **kwargs) -> dict[str, Path]:
    """:func:`synthesize` unless ``out`` already holds a complete synth with this seed and scale."""
    out = Path(out).expanduser()
    marker = _read_marker(out)
    if (
        marker is not None and marker.get("status") == "complete" and marker.get("seed") == seed
        and marker.get("scale") == scale and marker.get("version") == GENERATOR_VERSION
        and all((out / name).is_dir() for name in DOMAINS)
    ):
        return {name: out / name for name in DOMAINS}
    return synthesize(out, seed, scale, **kwargs)

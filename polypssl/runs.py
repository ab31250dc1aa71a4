"""Run directories: resolved config, provenance, metrics and atomic writes.

Every file a run writes goes through a temporary name in the same directory followed by
``os.replace``, so an interrupted run never leaves a half-written config, metric file or
weight file behind: readers see the old version or the new one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from polypssl.config import config_to_yaml

PACKAGES = (
    "polypssl", "torch", "torchvision", "timm", "lightly", "accelerate", "datasets",
    "segmentation-models-pytorch", "safetensors", "numpy", "scipy", "wandb", "omegaconf",
)
COMPLETE_MARKER = "provenance.json"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a single small write; readers skip a torn last line)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=float) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (contiguous, on CPU) as safetensors, atomically."""
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints and archives can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """Commit of the polypssl source tree, with ``-dirty`` when it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(world_size: int = 1, **extra: Any) -> dict[str, Any]:
    """Who ran what, where: git commit, package versions, host, world size, start time."""
    import torch

    info: dict[str, Any] = {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "world_size": world_size,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "started": now(),
        "ended": None,
        "status": "running",
    }
    info.update(extra)
    return info


def init_run_dir(run_dir: str | Path, cfg: Any, world_size: int = 1, **extra: Any) -> Path:
    """Create ``run_dir`` with ``config.yaml`` and ``provenance.json`` (status ``running``).

    A resumed run keeps its original start time and records the resume.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    prov_path = run_dir / "provenance.json"
    prov = provenance(world_size, **extra)
    if prov_path.exists():
        old = read_json(prov_path)
        prov["started"] = old.get("started", prov["started"])
        prov["resumed"] = [*old.get("resumed", []), now()]
    write_json(prov_path, prov)
    return run_dir


def finish_run_dir(run_dir: str | Path, status: str = "complete", **extra: Any) -> None:
    """Mark the run finished in ``provenance.json`` (``status`` complete or failed)."""
    prov_path = Path(run_dir) / "provenance.json"
    prov = read_json(prov_path) if prov_path.exists() else provenance()
    prov.update(ended=now(), status=status, **extra)
    write_json(prov_path, prov)


def is_complete(run_dir: str | Path) -> bool:
    """True when the run in ``run_dir`` finished successfully."""
    prov_path = Path(run_dir) / "provenance.json"
    if not prov_path.exists():
        return False
    try:
        return read_json(prov_path).get("status") == "complete"
    except json.JSONDecodeError:
        return False

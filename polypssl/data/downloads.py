"""``download``: fetch and unpack the datasets that have an open direct link.

Resumable: bytes go to ``<archive>.part`` and a later attempt (or a retry after a cut
connection) asks for the rest with an HTTP Range request; a server that ignores Range is
answered by starting over. Unpacking checks every member before writing anything: absolute
paths, ``..`` components, links and device files are refused, so nothing lands outside DEST.
urllib and zipfile/tarfile are enough here; no extra dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from polypssl.data.sources import check_name, labelled_files, unlabelled_files
from polypssl.errors import PolypsslError

log = logging.getLogger(__name__)

URLS = {
    "kvasir-seg": "https://datasets.simula.no/downloads/kvasir-seg.zip",
    "hyperkvasir-unlabelled": "https://datasets.simula.no/downloads/hyper-kvasir/hyper-kvasir-unlabeled-images.zip",
}
HOW_TO_GET = {
    "cvc-clinicdb": (
        "CVC-ClinicDB has no open direct link: request it at https://polyp.grand-challenge.org/CVCClinicDB/ "
        "(or use a mirror), unpack it so that DEST/CVC-ClinicDB/Original/*.tif and "
        "DEST/CVC-ClinicDB/'Ground Truth'/*.tif exist, then run `polypssl data check cvc-clinicdb DEST`. "
        "A HuggingFace Hub copy works too: use dataset name `hf` with the Hub id as ROOT."
    ),
    "imagenet-1k": (
        "ImageNet-1k needs a registration: download ILSVRC2012 from https://image-net.org, unpack the train "
        "set as DEST/train/<wnid>/*.JPEG, then run `polypssl data check imagenet-1k DEST`. The gated Hub "
        "copy works too: accept its terms, log in, and use dataset name `hf` with the Hub id ILSVRC/imagenet-1k."
    ),
}
CHUNK = 1 << 20
RETRIES = 5


class _CutConnection(Exception):
    """The server sent fewer bytes than announced."""


def _fetch_once(url: str, part: Path, bar) -> int | None:
    """Append the rest of ``url`` to ``part``; returns the total size (None if unknown)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "polypssl", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch, or a stale .part: check the size
            total = err.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == have:
                return have
            part.unlink()
            raise _CutConnection("stale partial file discarded") from err
        raise
    with response:
        if have and response.status != 206:
            log.info("server ignored the Range request; restarting %s", url)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        bar.reset(total=total)
        bar.update(have)
        with open(part, "ab" if have else "wb") as fh:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _CutConnection(f"got {size} of {total} bytes")
    return total


def fetch(url: str, path: Path, retries: int = RETRIES, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``path`` via ``path.part``, resuming after cut connections."""
    from tqdm.auto import tqdm

    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(desc=path.name, unit="B", unit_scale=True, unit_divisor=1024) as bar:
        for attempt in range(retries + 1):
            try:
                _fetch_once(url, part, bar)
                break
            except (TimeoutError, _CutConnection, http.client.HTTPException, ConnectionError, urllib.error.URLError) as err:
                if isinstance(err, urllib.error.HTTPError) and err.code < 500:
                    raise PolypsslError(f"download of {url} failed: HTTP {err.code} {err.reason}; check the URL") from err
                if attempt == retries:
                    raise PolypsslError(
                        f"download of {url} failed after {retries + 1} attempts ({err}); run the same command "
                        f"again to resume from {part}"
                    ) from err
                log.warning("download interrupted (%s); resuming", err)
                time.sleep(backoff * (attempt + 1))
    os.replace(part, path)
    return path


def _unsafe(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def _check_members(archive: Path) -> list[str]:
    """Every unsafe member of a zip or tar archive (empty: safe to unpack)."""
    bad = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if _unsafe(info.filename):
                    bad.append(f"{info.filename} (path outside the destination)")
                elif stat.S_ISLNK(mode):
                    bad.append(f"{info.filename} (link)")
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if _unsafe(member.name):
                    bad.append(f"{member.name} (path outside the destination)")
                elif member.issym() or member.islnk():
                    bad.append(f"{member.name} (link)")
                elif not (member.isfile() or member.isdir()):
                    bad.append(f"{member.name} (special file)")
    else:
        raise PolypsslError(f"{archive} is neither a zip nor a tar archive; check the URL")
    return bad


def safe_unpack(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` after refusing any member that could escape it."""
    bad = _check_members(archive)
    if bad:
        raise PolypsslError(
            f"refusing to unpack {archive}: unsafe members {', '.join(bad[:10])}"
            + (f" and {len(bad) - 10} more" if len(bad) > 10 else "") + "; nothing was written"
        )
    tmp = dest / f".unpack-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")  # the stdlib's own guard, on top of ours
        for entry in sorted(tmp.iterdir()):
            target = dest / entry.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(name: str, dest: str | Path, url: str | None = None, sha256: str | None = None) -> Path:
    """Download and unpack dataset ``name`` into ``dest``; returns the dataset folder.

    The archive's sha256 is checked against ``sha256`` when given and recorded in
    ``dest/<name>.download.json``; the archive itself is deleted once unpacked and checked.
    """
    from polypssl.runs import now, sha256_file, write_json

    check_name(name)
    if name in HOW_TO_GET:
        raise PolypsslError(HOW_TO_GET[name])
    if name not in URLS and url is None:
        raise PolypsslError(
            f"dataset {name!r} has no download link; downloadable: {', '.join(URLS)} (or pass --url)"
        )
    url = url or URLS[name]
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / (PurePosixPath(urllib.parse.urlsplit(url).path).name or f"{name}.archive")
    if not archive.exists():
        fetch(url, archive)
    digest = sha256_file(archive)
    if sha256 and digest.lower() != sha256.lower():
        raise PolypsslError(
            f"{archive} has sha256 {digest}, expected {sha256}; delete it and download again (or check the mirror)"
        )
    safe_unpack(archive, dest)
    folder = _dataset_folder(name, dest)
    write_json(dest / f"{name}.download.json", {
        "dataset": name, "url": url, "archive": archive.name, "sha256": digest,
        "bytes": archive.stat().st_size, "downloaded": now(), "folder": str(folder),
    })
    archive.unlink()
    return folder


def _dataset_folder(name: str, dest: Path) -> Path:
    """Structure check after unpacking; returns the folder the dataset's files sit in."""
    try:
        if name in ("kvasir-seg", "cvc-clinicdb"):
            images, _ = labelled_files(name, dest)
            return images[0].parent.parent
        files = unlabelled_files(name, dest)
        return Path(os.path.commonpath([str(f.parent) for f in files]))
    except PolypsslError as err:
        raise PolypsslError(f"unpacked archive does not have the expected layout: {err}") from err

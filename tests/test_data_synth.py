"""Synthetic domains: real layouts, clean under `data check`, deterministic, interrupt-safe."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from polypssl.data import check_dataset, ensure_synthetic, open_labelled, open_unlabelled, synthesize
from polypssl.data.synth import MARKER, _polyp_count, render_frame
from polypssl.errors import PolypsslError


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, synthesize(out, seed=3, scale="tiny", workers=1, progress=False)


def test_layouts_and_check(synth):
    out, paths = synth
    assert set(paths) == {"kvasir-seg", "cvc-clinicdb", "hyperkvasir-unlabelled"}
    assert sorted(p.name for p in (paths["cvc-clinicdb"] / "Original").iterdir())[:3] == ["1.tif", "10.tif", "2.tif"]
    assert (paths["cvc-clinicdb"] / "Ground Truth" / "10.tif").exists()
    for name in ("kvasir-seg", "cvc-clinicdb"):
        assert check_dataset(name, paths[name]) == []
        assert check_dataset(name, out) == []  # the synth's own folder names are accepted from the parent
    assert check_dataset("hyperkvasir-unlabelled", out) == []
    cvc = open_labelled("cvc-clinicdb", out)
    image, mask = cvc[0]
    assert image.size == (384, 288) and Image.open(cvc.image_paths[0]).format == "TIFF"
    kvasir = open_labelled("kvasir-seg", out)
    sizes = {kvasir.load_image(i).size for i in range(len(kvasir))}
    assert len(sizes) > 3  # varied frame sizes
    assert all(kvasir[i][1].any() for i in range(len(kvasir)))  # every labelled frame has a polyp
    assert len(open_unlabelled("hyperkvasir-unlabelled", out)) == 12
    assert not (paths["hyperkvasir-unlabelled"] / "masks").exists()


def test_deterministic_whatever_the_worker_count(synth, tmp_path):
    out, _ = synth
    again = synthesize(tmp_path, seed=3, scale="tiny", workers=2, progress=False)
    for name, path in again.items():
        assert digest(path) == digest(out / name)
    other = render_frame(4, "kvasir-seg", 0, "tiny")[0]
    assert not np.array_equal(np.asarray(other), np.asarray(render_frame(3, "kvasir-seg", 0, "tiny")[0]))


def test_domains_differ_and_unlabelled_has_empty_frames():
    kv = np.stack([np.asarray(render_frame(0, "kvasir-seg", i, "small")[0].resize((64, 48))) for i in range(8)])
    cvc = np.stack([np.asarray(render_frame(0, "cvc-clinicdb", i, "small")[0].resize((64, 48))) for i in range(8)])
    kv_balance = kv[..., 1].mean() / kv[..., 0].mean()
    cvc_balance = cvc[..., 1].mean() / cvc[..., 0].mean()
    assert abs(kv_balance - cvc_balance) > 0.05
    cvc_frac = np.mean([render_frame(0, "cvc-clinicdb", i)[1].mean() for i in range(12)])
    kv_frac = np.mean([render_frame(0, "kvasir-seg", i)[1].mean() for i in range(12)])
    assert cvc_frac < kv_frac  # smaller polyps in the clinic-like domain
    rng = np.random.default_rng(0)
    counts = [_polyp_count(rng, unlabelled=True) for _ in range(200)]
    assert 0 in counts and max(counts) >= 2
    assert min(_polyp_count(rng, unlabelled=False) for _ in range(200)) == 1


def test_ensure_synthetic_is_idempotent_and_refuses_foreign_folders(tmp_path):
    paths = ensure_synthetic(tmp_path, seed=1, scale="tiny", workers=1, progress=False)
    stamp = (paths["kvasir-seg"] / "images").stat().st_mtime_ns, (tmp_path / MARKER).read_text()
    assert ensure_synthetic(tmp_path, seed=1, scale="tiny") == paths
    assert ((paths["kvasir-seg"] / "images").stat().st_mtime_ns, (tmp_path / MARKER).read_text()) == stamp
    # An interrupted run leaves the marker in "writing" state: the next call redoes the work.
    (tmp_path / MARKER).write_text('{"status": "writing", "seed": 1, "scale": "tiny", "version": 1}')
    ensure_synthetic(tmp_path, seed=1, scale="tiny", workers=1, progress=False)
    assert '"complete"' in (tmp_path / MARKER).read_text()
    foreign = tmp_path / "foreign"
    (foreign / "kvasir-seg").mkdir(parents=True)
    with pytest.raises(PolypsslError, match="not written by"):
        synthesize(foreign, scale="tiny", workers=1, progress=False)
    with pytest.raises(PolypsslError, match="small, tiny, full"):
        synthesize(tmp_path / "x", scale="huge")

"""Downloads: resume after a cut connection, restart when Range is ignored, refuse unsafe archives."""

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from polypssl.data import download, open_labelled
from polypssl.data.downloads import fetch
from polypssl.errors import PolypsslError


def kvasir_zip(n=3) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        rng = np.random.default_rng(0)
        for k in range(n):
            for folder, arr in (("images", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)),
                                ("masks", np.zeros((20, 30), np.uint8))):
                img = io.BytesIO()
                Image.fromarray(arr).save(img, "JPEG")
                zf.writestr(f"Kvasir-SEG/{folder}/p{k}.jpg", img.getvalue())
        zf.writestr("Kvasir-SEG/kavsir_bboxes.json", "{}")
    return buf.getvalue()


class Server:
    """Loopback HTTP server: ``files`` by path; ``cut_first`` closes the first response midway;
    ``honour_range`` False ignores Range headers (always 200 with the whole body)."""

    def __init__(self, files, cut_first=False, honour_range=True):
        self.files, self.cut_first, self.honour_range = files, cut_first, honour_range
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.files.get(self.path)
                server.requests.append(self.headers.get("Range"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.cut_first and len(server.requests) == 1:
                    self.wfile.write(body[start : start + len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_is_the_function():
    import polypssl.data.downloads  # noqa: F401  (importing the module must not shadow the function)
    from polypssl.data import download as fn

    assert callable(fn) and fn.__name__ == "download"


def test_download_resumes_after_cut_connection(tmp_path, monkeypatch):
    monkeypatch.setattr("polypssl.data.downloads.time.sleep", lambda s: None)
    body = kvasir_zip()
    with Server({"/kvasir-seg.zip": body}, cut_first=True) as server:
        folder = download("kvasir-seg", tmp_path / "data", url=server.url("/kvasir-seg.zip"))
    assert server.requests[0] is None and server.requests[1] == f"bytes={len(body) // 2}-"
    assert folder == tmp_path / "data" / "Kvasir-SEG"
    assert len(open_labelled("kvasir-seg", tmp_path / "data")) == 3
    record = json.loads((tmp_path / "data" / "kvasir-seg.download.json").read_text())
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    assert not list((tmp_path / "data").glob("*.zip*"))  # archive and .part removed


def test_existing_part_file_is_resumed_or_restarted(tmp_path):
    body = bytes(range(256)) * 40
    for honour in (True, False):
        dest = tmp_path / f"h{honour}" / "f.bin"
        dest.parent.mkdir()
        dest.with_name("f.bin.part").write_bytes(body[:1000])
        with Server({"/f.bin": body}, honour_range=honour) as server:
            fetch(server.url("/f.bin"), dest)
        assert server.requests == ["bytes=1000-"]
        assert dest.read_bytes() == body


def test_checksum_mismatch_and_http_errors(tmp_path):
    with Server({"/k.zip": kvasir_zip()}) as server:
        with pytest.raises(PolypsslError, match="sha256"):
            download("kvasir-seg", tmp_path, url=server.url("/k.zip"), sha256="0" * 64)
        with pytest.raises(PolypsslError, match="HTTP 404"):
            download("kvasir-seg", tmp_path / "b", url=server.url("/missing.zip"))


def malicious_archives():
    z1 = io.BytesIO()
    with zipfile.ZipFile(z1, "w") as zf:
        zf.writestr("Kvasir-SEG/images/ok.jpg", b"x")
        zf.writestr("../escaped.txt", b"evil")
    z2 = io.BytesIO()
    with zipfile.ZipFile(z2, "w") as zf:
        zf.writestr("ok.txt", b"x")
        zf.writestr("/tmp/absolute-escape.txt", b"evil")
    z3 = io.BytesIO()
    with zipfile.ZipFile(z3, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    t1 = io.BytesIO()
    with tarfile.open(fileobj=t1, mode="w:gz") as tf:
        link = tarfile.TarInfo("Kvasir-SEG/images")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tf.addfile(link)
        data = tarfile.TarInfo("Kvasir-SEG/images/x.jpg")
        data.size = 1
        tf.addfile(data, io.BytesIO(b"x"))
    t2 = io.BytesIO()
    with tarfile.open(fileobj=t2, mode="w") as tf:
        data = tarfile.TarInfo("../../escaped.txt")
        data.size = 4
        tf.addfile(data, io.BytesIO(b"evil"))
    return {"/a.zip": z1.getvalue(), "/b.zip": z2.getvalue(), "/c.zip": z3.getvalue(),
            "/d.tar.gz": t1.getvalue(), "/e.tar": t2.getvalue()}


def test_malicious_archives_are_refused_and_nothing_escapes(tmp_path):
    root = tmp_path / "root"
    dest = root / "dest"
    archives = malicious_archives()
    with Server(archives) as server:
        for path in archives:
            with pytest.raises(PolypsslError, match="refusing to unpack"):
                download("kvasir-seg", dest, url=server.url(path))
    outside = [p for p in root.rglob("*") if dest not in p.parents and p != dest]
    assert outside == []
    unpacked = [p for p in dest.rglob("*") if not p.name.endswith((".zip", ".tar", ".gz"))]
    assert unpacked == []  # refused before writing anything


def test_datasets_without_open_link_explain_how_to_get_them(tmp_path):
    with pytest.raises(PolypsslError, match="grand-challenge.*hf"):
        download("cvc-clinicdb", tmp_path)
    with pytest.raises(PolypsslError, match="image-net.org.*ILSVRC/imagenet-1k"):
        download("imagenet-1k", tmp_path)
    with pytest.raises(PolypsslError, match="unknown dataset name"):
        download("kvasir", tmp_path)


def test_wrong_structure_after_unpacking(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("something/else.txt", b"x")
    with Server({"/k.zip": buf.getvalue()}) as server, pytest.raises(PolypsslError, match="expected layout"):
        download("kvasir-seg", tmp_path, url=server.url("/k.zip"))

"""Allen dataset download (resumable, checksummed) against a loopback HTTP server; unpacking; manifests.

The real archives hold Zeiss CZI files; no installed library can write CZI (czifile only
reads), so the tiny archives here hold OME-TIFFs with the same channel layouts (7 and 4
channels) and the manifest logic is tested on those.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from labelfree_jax.core.errors import InputError, IntegrityError
from labelfree_jax.hub import allen_data
from labelfree_jax.imagefiles import write_ome_tiff
from labelfree_jax.imagefiles.manifest import read_manifest
from labelfree_jax.training.datasets import FileDataset

REPO = Path(__file__).resolve().parents[2]


class _Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with HTTP Range support and failure modes.

    ``cut``: name -> number of bytes after which the *first* response for it is cut off
    (the connection closes early). ``ignore_range``: answer every request with the whole file.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                limit = server.cut.pop(name, None)
                if limit is not None:
                    self.wfile.write(body[:limit])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image_bytes(tmp: Path, n_channels: int, seed: int) -> bytes:
    data = (np.arange(n_channels, dtype=np.float32)[:, None, None, None] * 100
            + np.random.default_rng(seed).uniform(size=(n_channels, 2, 16, 16)).astype(np.float32))
    path = write_ome_tiff(tmp / f"img{seed}.ome.tif", data)
    return path.read_bytes()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("allen_src")
    lamin = {f"lamin_b1/cell_{i:02d}.ome.tif": _image_bytes(tmp, 7 if i % 3 else 4, i) for i in range(10)}
    dic = {f"dic_lamin_b1/dic_{i}.ome.tif": _image_bytes(tmp, 7, 100 + i) for i in range(4)}
    return {"lamin_b1.tar.gz": _tar(lamin), "dic_lamin_b1.tar.gz": _tar(dic)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# downloads
# --------------------------------------------------------------------------------------------
def test_download_resumes_after_a_dropped_connection(archives, tmp_path):
    data = archives["lamin_b1.tar.gz"]
    with _Server(archives) as srv:
        srv.cut["lamin_b1.tar.gz"] = len(data) // 3
        path = allen_data.download_file(f"{srv.url}/lamin_b1.tar.gz", tmp_path / "lamin_b1.tar.gz", progress=False)
    assert path.read_bytes() == data
    assert srv.requests == [("lamin_b1.tar.gz", None), ("lamin_b1.tar.gz", f"bytes={len(data) // 3}-")]
    assert allen_data.read_checksums(tmp_path) == {"lamin_b1.tar.gz": _sha(data)}
    assert not (tmp_path / "lamin_b1.tar.gz.part").exists()


def test_download_resumes_in_a_later_run_and_verifies(archives, tmp_path):
    data = archives["lamin_b1.tar.gz"]
    dest = tmp_path / "lamin_b1.tar.gz"
    with _Server(archives) as srv:
        srv.cut["lamin_b1.tar.gz"] = 1000
        with pytest.raises(InputError, match="run again to resume from byte 1000"):
            allen_data.download_file(f"{srv.url}/lamin_b1.tar.gz", dest, retries=0, progress=False)
        assert (tmp_path / "lamin_b1.tar.gz.part").stat().st_size == 1000 and not dest.exists()
        allen_data.download_file(f"{srv.url}/lamin_b1.tar.gz", dest, sha256=_sha(data), progress=False)
        assert srv.requests[-1] == ("lamin_b1.tar.gz", "bytes=1000-")
        assert dest.read_bytes() == data
        # an existing file is verified, not fetched again
        n = len(srv.requests)
        allen_data.download_file(f"{srv.url}/lamin_b1.tar.gz", dest, progress=False)
        assert len(srv.requests) == n


def test_checksum_mismatch_is_an_error(archives, tmp_path):
    data = archives["dic_lamin_b1.tar.gz"]
    with _Server(archives) as srv:
        with pytest.raises(IntegrityError, match="expected 0000"):
            allen_data.download_file(f"{srv.url}/dic_lamin_b1.tar.gz", tmp_path / "d.tar.gz", sha256="0" * 64,
                                     progress=False)
        assert not (tmp_path / "d.tar.gz").exists() and not (tmp_path / "d.tar.gz.part").exists()
        # recorded on first download, checked afterwards: a corrupted file is reported
        allen_data.download_file(f"{srv.url}/dic_lamin_b1.tar.gz", tmp_path / "d.tar.gz", progress=False)
        assert allen_data.read_checksums(tmp_path)["d.tar.gz"] == _sha(data)
        (tmp_path / "d.tar.gz").write_bytes(data[:-1] + b"x")
        with pytest.raises(IntegrityError, match="does not match"):
            allen_data.download_file(f"{srv.url}/dic_lamin_b1.tar.gz", tmp_path / "d.tar.gz", progress=False)


def test_server_ignoring_range_restarts_the_file(archives, tmp_path):
    data = archives["lamin_b1.tar.gz"]
    (tmp_path / "x.tar.gz.part").write_bytes(b"garbage that is not the file's start")
    with _Server(archives) as srv:
        srv.ignore_range = True
        allen_data.download_file(f"{srv.url}/lamin_b1.tar.gz", tmp_path / "x.tar.gz", progress=False)
    assert srv.requests[0][1] is not None  # it did ask for the rest
    assert (tmp_path / "x.tar.gz").read_bytes() == data


def test_only_http_urls_and_unknown_archives(tmp_path):
    with pytest.raises(InputError, match="http"):
        allen_data.download_file("file:///etc/passwd", tmp_path / "p")
    with pytest.raises(Exception, match="unknown archive"):
        allen_data.download_archives(["nope"], tmp_path)
    assert allen_data.archive_url("zo1") == allen_data.BASE_URL + "/zo1.tar.gz"
    assert set(allen_data.STRUCTURES) == {
        "dna", "lamin_b1", "membrane", "fibrillarin", "tom20", "sec61_beta", "st6gal1", "alpha_tubulin",
        "beta_actin", "desmoplakin", "myosin_iib", "zo1", "dic_lamin_b1", "dic_membrane"}


# --------------------------------------------------------------------------------------------
# unpacking and manifests
# --------------------------------------------------------------------------------------------
def test_unsafe_archive_member_is_refused(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(_tar({"../evil.txt": b"x"}))
    with pytest.raises(InputError, match="cannot unpack"):
        allen_data.extract_archive(bad, tmp_path / "images")
    assert not (tmp_path / "evil.txt").exists()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_download_unpack_and_manifests(archives, tmp_path):
    with _Server(archives) as srv:
        paths = allen_data.download_archives(["lamin_b1", "dic_lamin_b1"], tmp_path / "archives",
                                             base_url=srv.url, progress=False)
    images = tmp_path / "images"
    for p in paths:
        allen_data.extract_archive(p, images)
    assert len(allen_data.collect_images(images, "lamin_b1")) == 10
    written = allen_data.write_manifests(images, tmp_path / "manifests", ["lamin_b1", "dna", "dic_membrane", "zo1"])
    assert set(written) == {"lamin_b1", "dna", "dic_membrane"}  # no zo1 images: skipped
    lamin = _rows(written["lamin_b1"]["all"])
    assert list(lamin[0]) == ["path", "channel_signal", "channel_target"]
    for row in lamin:
        n = 4 if int(Path(row["path"]).stem.split("_")[1].split(".")[0]) % 3 == 0 else 7
        expected = {7: ("6", "3"), 4: ("3", "1")}[n]
        assert (row["channel_signal"], row["channel_target"]) == expected
    dna = _rows(written["dna"]["all"])
    assert {(r["channel_signal"], r["channel_target"]) for r in dna} == {("6", "5"), ("3", "2")}
    assert {(r["channel_signal"], r["channel_target"]) for r in _rows(written["dic_membrane"]["all"])} == {("6", "1")}
    # the original split procedure: RandomState(42).permutation of the ordered rows, first 75 % train
    train, test = _rows(written["lamin_b1"]["train"]), _rows(written["lamin_b1"]["test"])
    perm = np.random.RandomState(42).permutation(10)
    assert [r["path"] for r in train] == [lamin[i]["path"] for i in perm[:8]]  # round(7.5) == 8
    assert [r["path"] for r in test] == [lamin[i]["path"] for i in perm[8:]]
    # the manifests load: channel 6 is the signal, 3 the target (values 600.. and 300..)
    ds = FileDataset(read_manifest(written["lamin_b1"]["train"]))
    pair = ds.load(0)
    offset = 600 if train[0]["channel_signal"] == "6" else 300
    assert pair.signal.shape == (1, 2, 16, 16) and offset <= pair.signal.min() < offset + 1


def test_original_split_lists_are_used_when_given(archives, tmp_path):
    images = tmp_path / "images"
    with _Server(archives) as srv:
        (p,) = allen_data.download_archives(["dic_lamin_b1"], tmp_path / "a", base_url=srv.url, progress=False)
    allen_data.extract_archive(p, images)
    split = tmp_path / "orig"
    split.mkdir()
    (split / "dic_lamin_b1_train.csv").write_text(
        "path_czi,channel_signal,channel_target\ndata/dic_lamin_b1/dic_3.ome.tif,6,3\ndata/dic_lamin_b1/dic_0.ome.tif,6,3\n")
    (split / "dic_lamin_b1_test.csv").write_text("path_czi,channel_signal,channel_target\ndata/x/dic_2.ome.tif,6,3\n")
    written = allen_data.write_manifests(images, tmp_path / "m", ["dic_lamin_b1"], split_dir=split)
    assert [Path(r["path"]).name for r in _rows(written["dic_lamin_b1"]["train"])] == ["dic_3.ome.tif", "dic_0.ome.tif"]
    assert [Path(r["path"]).name for r in _rows(written["dic_lamin_b1"]["test"])] == ["dic_2.ome.tif"]


def test_czi_header_errors_are_clear(tmp_path):
    fake = tmp_path / "fake.czi"
    fake.write_bytes(b"not a czi file at all" * 10)
    with pytest.raises(InputError, match="fake.czi: cannot read the CZI header"):
        allen_data.channel_count(fake)


def test_download_script_end_to_end(archives, tmp_path):
    spec = importlib.util.spec_from_file_location("download_allen_data", REPO / "scripts" / "download_allen_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with _Server(archives) as srv:
        code = module.main(["--out", str(tmp_path / "allen"), "--structures", "dic_lamin_b1", "dic_membrane",
                            "--base-url", srv.url, "--no-progress"])
    assert code == 0
    assert [name for name, _ in srv.requests] == ["dic_lamin_b1.tar.gz"]  # fetched once for both structures
    for s in ("dic_lamin_b1", "dic_membrane"):
        rows = _rows(tmp_path / "allen" / "manifests" / s / "train.csv")
        assert len(rows) == 3 and (tmp_path / "allen" / "manifests" / s / "test.csv").is_file()
    assert "dic_lamin_b1.tar.gz" in allen_data.read_checksums(tmp_path / "allen" / "archives")

"""Downloads against a loopback HTTP server started here (127.0.0.1 only; nothing leaves it)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from captionkit.data import download as dl
from captionkit.data.download import Asset, download_dataset, download_file, safe_extract
from captionkit.errors import CaptionKitError

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class _Server(ThreadingHTTPServer):
    """Serves files of ``root``; records requests; can cut, corrupt or ignore ranges."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.root = root
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_after: dict[str, int] = {}  # file -> bytes sent before hanging up (once)
        self.override: dict[str, bytes] = {}  # file -> bytes served instead of its content
        self.ignore_range = False
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _RangeHandler(BaseHTTPRequestHandler):
    """GET with ``Range: bytes=N-`` support: 206 + Content-Range, 416 past the end, else 200."""

    timeout = 5
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv, name = self.server, self.path.lstrip("/")
        srv.log.append((self.path, self.headers.get("Range")))
        path = srv.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = srv.override.get(name, path.read_bytes())
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        ranged = match is not None and not srv.ignore_range
        start = int(match.group(1)) if ranged else 0
        if start >= len(data) and ranged:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.cut_after.pop(name, None)
        self.wfile.write(body if cut is None else body[:cut])

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep test output quiet."""


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Make sure urllib talks to the loopback server directly."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture()
def server(tmp_path):
    """A loopback server in a daemon thread, shut down at teardown."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = _Server(root)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _sha(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def _make_zip(path: Path, members: dict[str, bytes] | None = None) -> Path:
    members = members or {"pack/a.txt": b"alpha\n", "pack/sub/b.txt": b"beta\n"}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _tar_info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size
    return info


def _make_tar(path: Path, entries: list[tarfile.TarInfo] | None = None) -> Path:
    """A .tar.gz; regular entries get ``name`` as their content."""
    entries = entries or [
        _tar_info("pack", tarfile.DIRTYPE),
        _tar_info("pack/a.txt"),
        _tar_info("pack/sub/b.txt"),
        _tar_info("pack/alias.txt", tarfile.SYMTYPE, "a.txt"),
    ]
    with tarfile.open(path, "w:gz") as tf:
        for info in entries:
            data = info.name.encode() if info.isfile() else b""
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- download_file


def test_clean_download_then_extract(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("captionkit.progress.interactive", lambda stream=None: True)  # a terminal
    archive = _make_zip(server.root / "data.zip")
    dest = tmp_path / "dl" / "data.zip"
    got = download_file(f"{server.url}/data.zip", dest, archive.stat().st_size, _sha(archive))
    assert got == dest and _sha(dest) == _sha(archive)
    assert not dest.with_name("data.zip.part").exists()
    assert dest.with_name("data.zip.sha256").read_text().split()[0] == _sha(archive)
    assert "data.zip" in capsys.readouterr().err  # the progress bar
    files = safe_extract(dest, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == [
        "pack/a.txt",
        "pack/sub/b.txt",
    ]
    assert (tmp_path / "out/pack/sub/b.txt").read_bytes() == b"beta\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pack"]  # no temp folder left
    tar = _make_tar(server.root / "data.tar.gz")
    tdest = download_file(f"{server.url}/data.tar.gz", tmp_path / "dl/t.tar.gz", progress=False)
    assert _sha(tdest) == _sha(tar)
    safe_extract(tdest, tmp_path / "out")  # merges into the existing pack/
    assert (tmp_path / "out/pack/alias.txt").read_bytes() == b"pack/a.txt"
    assert (tmp_path / "out/pack/alias.txt").is_symlink()


def test_existing_verified_file_is_not_downloaded_again(server, tmp_path):
    (server.root / "f.bin").write_bytes(b"x" * 100)
    dest = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", 100, progress=False)
    server.log.clear()
    assert download_file(f"{server.url}/f.bin", dest, 100, _sha(dest), progress=False) == dest
    assert server.log == []


def test_interrupted_download_resumes_with_range(server, tmp_path):
    payload = random.Random(0).randbytes(300_000)
    (server.root / "big.bin").write_bytes(payload)
    server.cut_after["big.bin"] = 120_000
    dest, part = tmp_path / "big.bin", tmp_path / "big.bin.part"
    url = f"{server.url}/big.bin"
    with pytest.raises(CaptionKitError, match="re-running") as err:
        download_file(url, dest, len(payload), _sha(payload), progress=False, chunk=8192)
    assert url in str(err.value) and "120000 bytes are kept" in str(err.value)
    assert not dest.exists() and part.stat().st_size == 120_000
    server.log.clear()
    download_file(url, dest, len(payload), _sha(payload), progress=False, chunk=8192)
    assert server.log == [("/big.bin", "bytes=120000-")]
    assert _sha(dest) == _sha(payload) and not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    payload = b"0123456789" * 1000
    (server.root / "f.bin").write_bytes(payload)
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"garbage!" * 50)
    download_file(f"{server.url}/f.bin", tmp_path / "f.bin", None, _sha(payload), progress=False)
    assert server.log == [("/f.bin", "bytes=400-")]
    assert (tmp_path / "f.bin").read_bytes() == payload


def test_complete_part_answered_416_is_verified_and_kept(server, tmp_path):
    payload = b"complete" * 100
    (server.root / "f.bin").write_bytes(payload)
    (tmp_path / "f.bin.part").write_bytes(payload)
    download_file(f"{server.url}/f.bin", tmp_path / "f.bin", None, _sha(payload), progress=False)
    assert server.log == [("/f.bin", f"bytes={len(payload)}-")]
    assert (tmp_path / "f.bin").read_bytes() == payload
    assert not (tmp_path / "f.bin.part").exists()


def test_corrupted_download_is_deleted_and_reported(server, tmp_path):
    archive = _make_zip(server.root / "data.zip")
    good = _sha(archive)
    server.override["data.zip"] = b"\0" * archive.stat().st_size  # right size, wrong bytes
    dest = tmp_path / "data.zip"
    with pytest.raises(CaptionKitError, match="checksum mismatch") as err:
        download_file(f"{server.url}/data.zip", dest, archive.stat().st_size, good, progress=False)
    bad = _sha(server.override["data.zip"])
    assert "data.zip" in str(err.value) and good in str(err.value) and bad in str(err.value)
    assert not dest.exists() and not (tmp_path / "data.zip.part").exists()


def test_corrupted_dataset_download_extracts_nothing(server, tmp_path, monkeypatch):
    archive = _make_zip(server.root / "data.zip")
    size, good = archive.stat().st_size, _sha(archive)
    server.override["data.zip"] = b"\0" * size
    asset = Asset("data", "https://example.invalid/data.zip", "data.zip", size, good)
    monkeypatch.setattr(dl, "DATASETS_TO_DOWNLOAD", {"tiny": (asset,)})
    to = tmp_path / "target"
    with pytest.raises(CaptionKitError, match="checksum"):
        download_dataset("tiny", to, progress=False, base_url=server.url)
    assert list(to.iterdir()) == []


def test_recorded_hash_guards_later_downloads(server, tmp_path):
    (server.root / "f.txt").write_bytes(b"first version\n")
    dest = download_file(f"{server.url}/f.txt", tmp_path / "f.txt", progress=False)
    assert (tmp_path / "f.txt.sha256").read_text().split()[0] == _sha(b"first version\n")
    dest.unlink()
    (server.root / "f.txt").write_bytes(b"changed version\n")
    with pytest.raises(CaptionKitError, match=r"checksum mismatch.*f\.txt\.sha256"):
        download_file(f"{server.url}/f.txt", dest, progress=False)


def test_offline_host_gives_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/data.zip"
    with pytest.raises(CaptionKitError) as err:
        download_file(url, tmp_path / "data.zip", progress=False, timeout=2)
    message = str(err.value)
    assert "offline" in message and "unreachable" in message and url in message
    assert "resumes" in message
    assert not (tmp_path / "data.zip").exists()


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(CaptionKitError, match="HTTP 404"):
        download_file(f"{server.url}/missing.zip", tmp_path / "m.zip", progress=False)


# --------------------------------------------------------------------------- safe_extract

EVIL_NAMES = ["../evil.txt", "pack/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt", "..\\evil.txt"]


@pytest.mark.parametrize("name", EVIL_NAMES)
def test_zip_path_traversal_is_refused(tmp_path, name):
    archive = _make_zip(tmp_path / "evil.zip", {"ok.txt": b"fine", name: b"pwned"})
    dest = tmp_path / "sub" / "dest"
    with pytest.raises(CaptionKitError, match="refusing to extract"):
        safe_extract(archive, dest)
    assert not dest.exists()
    assert not (tmp_path / "sub" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("name", EVIL_NAMES)
def test_tar_path_traversal_is_refused(tmp_path, name):
    archive = _make_tar(tmp_path / "evil.tar.gz", [_tar_info("ok.txt"), _tar_info(name)])
    dest = tmp_path / "sub" / "dest"
    with pytest.raises(CaptionKitError, match="refusing to extract"):
        safe_extract(archive, dest)
    assert not dest.exists() and not (tmp_path / "sub" / "evil.txt").exists()


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([_tar_info("pack/link", tarfile.SYMTYPE, "../../outside.txt")], "outside"),
        ([_tar_info("link", tarfile.SYMTYPE, "/etc/passwd")], "absolute"),
        ([_tar_info("hard", tarfile.LNKTYPE, "../outside.txt")], "outside"),
        (  # each link alone stays inside, but x follows y (which points two levels up) then ..
            [
                _tar_info("a/b/y", tarfile.SYMTYPE, "../.."),
                _tar_info("x", tarfile.SYMTYPE, "a/b/y/.."),
            ],
            "another link",
        ),
        (
            [_tar_info("d", tarfile.SYMTYPE, "pack"), _tar_info("d/evil.txt")],
            "through a link",
        ),
        ([_tar_info("dev/null", tarfile.CHRTYPE)], "device"),
        ([_tar_info("fifo", tarfile.FIFOTYPE)], "device"),
    ],
)
def test_tar_links_and_devices_are_refused(tmp_path, entries, why):
    archive = _make_tar(tmp_path / "evil.tar.gz", [_tar_info("ok.txt"), *entries])
    dest = tmp_path / "dest"
    with pytest.raises(CaptionKitError, match=why):
        safe_extract(archive, dest)
    assert not dest.exists()


def test_not_an_archive_is_reported(tmp_path):
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(CaptionKitError, match="not a .zip"):
        safe_extract(tmp_path / "plain.txt", tmp_path / "out")


# --------------------------------------------------------------------------- download_dataset


def test_download_dataset_from_mirror_then_noop(server, tmp_path, monkeypatch):
    zip_path = _make_zip(server.root / "images.zip")
    tar_path = _make_tar(server.root / "texts.tar.gz")
    (server.root / "README.txt").write_text("read me\n")
    table = {
        "tiny": (
            Asset(
                "images",
                "https://example.invalid/x/images.zip",
                "images.zip",
                zip_path.stat().st_size,
                _sha(zip_path),
            ),
            Asset(
                "texts",
                "https://example.invalid/x/texts.tar.gz",
                "texts.tar.gz",
                None,
                None,
                extract_to="texts",
            ),
            Asset(
                "readme",
                "https://example.invalid/README.txt",
                "README.txt",
                None,
                None,
                extract=False,
            ),
        )
    }
    monkeypatch.setattr(dl, "DATASETS_TO_DOWNLOAD", table)
    assert dl.list_downloadable() == ["tiny"]
    to = tmp_path / "data"
    assert download_dataset("tiny", to, progress=False, base_url=server.url + "/") == to
    assert sorted(path for path, _ in server.log) == ["/README.txt", "/images.zip", "/texts.tar.gz"]
    assert (to / "pack/sub/b.txt").read_bytes() == b"beta\n"
    assert (to / "texts/pack/a.txt").read_bytes() == b"pack/a.txt"
    assert (to / "README.txt").read_text() == "read me\n"
    assert not (to / "images.zip").exists() and not (to / "texts.tar.gz").exists()
    stamp = json.loads((to / dl.STAMP_NAME).read_text())
    assert set(stamp["assets"]) == {"images", "texts", "readme"}
    assert stamp["assets"]["images"]["sha256"] == _sha(zip_path)
    assert stamp["assets"]["texts"]["sha256"] == _sha(tar_path)
    server.log.clear()
    download_dataset("tiny", to, progress=False, base_url=server.url)
    assert server.log == []


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    names = dl.list_downloadable()
    for expected in ("flickr8k", "coco2014", "coco2017", "karpathy-splits", "flickr30k-captions"):
        assert expected in names
    with pytest.raises(CaptionKitError, match="unknown dataset 'nope'") as err:
        download_dataset("nope", tmp_path / "x", progress=False)
    assert all(name in str(err.value) for name in names)
    assert not (tmp_path / "x").exists()


def test_asset_table_is_consistent():
    assert set(dl.DATASETS_TO_DOWNLOAD) == set(dl.DATASET_DESCRIPTIONS)
    for assets in dl.DATASETS_TO_DOWNLOAD.values():
        assert assets and len({a.name for a in assets}) == len(assets)
        for asset in assets:
            assert asset.url.startswith(("http://", "https://"))
            assert asset.url.endswith("/" + asset.filename)
            assert asset.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", asset.sha256)
            assert asset.size is None or asset.size > 0
    coco = {a.filename for a in dl.DATASETS_TO_DOWNLOAD["coco2014"]}
    assert coco == {"train2014.zip", "val2014.zip", "annotations_trainval2014.zip"}
    assert "images" in dl.DATASET_DESCRIPTIONS["flickr30k-captions"]

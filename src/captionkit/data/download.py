"""Download caption datasets resumably (HTTP ``Range``), verify them and extract them safely.

COCO and Karpathy sizes/SHA-256 are those TensorFlow Datasets records for the same URLs. Flickr8k
publishes none: for assets with ``sha256=None`` the first download records the hash in
``<file>.sha256`` and later runs verify against that record."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from captionkit.errors import CaptionKitError
from captionkit.progress import bar as progress_bar

STAMP_NAME = ".captionkit-download.json"
_USER_AGENT = "captionkit-download/1"
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_NETWORK_ERRORS = (URLError, TimeoutError, ConnectionError, http.client.HTTPException)
_BAR = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "dynamic_ncols": True}
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.11.4+ guard
_EXTRACT_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError)


@dataclass(frozen=True)
class Asset:
    """A file to fetch (``None``: size/hash unpublished); archives unpack into ``extract_to``."""

    name: str
    url: str
    filename: str
    size: int | None
    sha256: str | None
    extract: bool = True
    extract_to: str = ""


_FLICKR8K = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/"
_COCO_ZIPS = "http://images.cocodataset.org/zips/"
_COCO_ANN = "http://images.cocodataset.org/annotations/"
_KARPATHY_BASE = "https://cs.stanford.edu/people/karpathy/deepimagesent/"
_SHA256 = {  # as recorded by TensorFlow Datasets (url_checksums/coco_captions.txt)
    "train2014": "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
    "val2014": "fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
    "annotations_trainval2014": "031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
    "train2017": "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929",
    "val2017": "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
    "annotations_trainval2017": "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
    "caption_datasets": "4cfd70132527b80933105e5829dc9034eaab9573482e2e680abbab6130244817",
}


def _asset(base: str, stem: str, size: int | None = None, extract_to: str = "") -> Asset:
    """The archive ``<base><stem>.zip``, its SHA-256 from ``_SHA256`` when published."""
    return Asset(
        stem, f"{base}{stem}.zip", f"{stem}.zip", size, _SHA256.get(stem), True, extract_to
    )


_KARPATHY = replace(_asset(_KARPATHY_BASE, "caption_datasets", 36_745_453), name="karpathy-splits")
DATASETS_TO_DOWNLOAD: dict[str, tuple[Asset, ...]] = {
    "flickr8k": (
        _asset(_FLICKR8K, "Flickr8k_Dataset"),
        _asset(_FLICKR8K, "Flickr8k_text", extract_to="Flickr8k_text"),
    ),
    "flickr30k-captions": (_KARPATHY,),
    "coco2014": (
        _asset(_COCO_ZIPS, "train2014", 13_510_573_713),
        _asset(_COCO_ZIPS, "val2014", 6_645_013_297),
        _asset(_COCO_ANN, "annotations_trainval2014", 252_872_794),
    ),
    "coco2017": (
        _asset(_COCO_ZIPS, "train2017", 19_336_861_798),
        _asset(_COCO_ZIPS, "val2017", 815_585_330),
        _asset(_COCO_ANN, "annotations_trainval2017", 252_907_541),
    ),
    "karpathy-splits": (_KARPATHY,),
}
DATASET_DESCRIPTIONS: dict[str, str] = {
    "flickr8k": "Flickr8k images (~1 GB) and captions/splits (Flickr8k_text/).",
    "flickr30k-captions": "Flickr30k captions/splits only: its images have no stable public URL.",
    "coco2014": "COCO 2014 train/val images (~20 GB) and annotations (Karpathy's split base).",
    "coco2017": "COCO 2017 train/val images (~20 GB) and annotations.",
    "karpathy-splits": "Karpathy's split JSONs for COCO, Flickr8k and Flickr30k (~36 MB).",
}


def list_downloadable() -> list[str]:
    """Names accepted by :func:`download_dataset`, sorted."""
    return sorted(DATASETS_TO_DOWNLOAD)


def download_file(
    url: str,
    dest: str | Path,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30,
    chunk: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest`` via ``<dest>.part``, resuming a part left by a cut-off try.

    A part is continued with ``Range: bytes=N-`` (206: append; 200: range ignored, restart;
    416: complete). Size and SHA-256 are checked before the rename to ``dest``; a mismatch
    deletes the part. Without ``sha256``, ``<dest>.sha256`` from an earlier download is the
    reference (each download records one). A ``dest`` that verifies is kept. Network
    failures (offline, unreachable, cut: re-run to resume) raise :class:`CaptionKitError`.
    """
    dest = Path(dest)
    expected_sha = (sha256 or _read_sidecar(dest) or "").lower() or None
    if dest.is_file() and (expected_size is None or dest.stat().st_size == expected_size):
        digest = _hash_file(dest)
        if expected_sha is None or digest == expected_sha:
            _write_sidecar(dest, digest)
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    digest = _fetch(url, part, offset, expected_size, progress, timeout, chunk)
    actual = part.stat().st_size
    hint = f" (recorded in {dest.name}.sha256; delete it if the file changed)" if not sha256 else ""
    if expected_size is not None and actual != expected_size:
        problem = f"size mismatch: {actual} bytes, expected {expected_size}"
    elif expected_sha is not None and digest != expected_sha:
        problem = f"checksum mismatch: SHA-256 expected {expected_sha}{hint}, got {digest}"
    else:
        problem = ""
    if problem:
        part.unlink()
        raise CaptionKitError(
            f"{dest.name}: {problem}; the corrupted download was deleted, "
            "re-run to download it again"
        )
    os.replace(part, dest)
    _write_sidecar(dest, digest)
    return dest


def _fetch(
    url: str, part: Path, offset: int, size: int | None, progress: bool, timeout: float, chunk: int
) -> str:
    """Stream ``url`` into ``part`` from byte ``offset``; the SHA-256 of the whole part."""
    headers = {"User-Agent": _USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # nothing left to send: the part is complete
            return _hash_file(part)
        raise CaptionKitError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, part, exc) from exc
    hasher, done = hashlib.sha256(), 0  # a 200 answer holds the whole file: start over
    try:
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if response.status == 206:  # the rest of the file, from ``offset``
                got = response.headers.get("Content-Range", "")
                match = _CONTENT_RANGE.match(got)
                if match is None or int(match.group(1)) != offset:
                    raise CaptionKitError(f"cannot resume {url}: range {got!r} for bytes={offset}-")
                done, whole = offset, match.group(3)
                total = int(whole) if whole != "*" else None if total is None else offset + total
            total = total if total is not None else size
            if done:
                _hash_file(part, hasher)
            bar = progress_bar(total=total, initial=done, desc=part.name[:-5], enabled=progress, leave=True, **_BAR)
            with open(part, "ab" if done else "wb") as fh, bar:
                while block := response.read(chunk):
                    fh.write(block)
                    hasher.update(block)
                    done += len(block)
                    bar.update(len(block))
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, part, exc) from exc
    if total is not None and done < total:
        raise _network_error(url, part, ConnectionError(f"cut after {done} of {total} bytes"))
    return hasher.hexdigest()


def _network_error(url: str, part: Path, exc: BaseException) -> CaptionKitError:
    """The error users see when the network fails: offline/unreachable, and how to resume."""
    kept = part.stat().st_size if part.is_file() else 0
    resume = f"{kept} bytes are kept in {part}; re-running" if kept else "Re-running"
    return CaptionKitError(
        f"cannot download {url} ({getattr(exc, 'reason', None) or exc}): the machine seems to "
        f"be offline or the host {urlsplit(url).netloc or url} is unreachable. Check the "
        f"network or proxy, or use a mirror. {resume} the same command resumes the partial file."
    )


def _hash_file(path: Path, hasher: Any = None) -> str:
    """Feed ``path`` into ``hasher`` (a new SHA-256 by default); its hex digest."""
    hasher = hasher if hasher is not None else hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def _read_sidecar(path: Path) -> str | None:
    """The hash recorded in ``<file>.sha256``, if any."""
    try:
        words = path.with_name(path.name + ".sha256").read_text(encoding="utf-8").split()
    except OSError:
        return None
    return words[0].lower() if words and len(words[0]) == 64 else None


def _write_sidecar(path: Path, digest: str) -> None:
    """Record ``digest`` in ``<file>.sha256`` (``sha256sum`` format)."""
    if _read_sidecar(path) != digest:
        path.with_name(path.name + ".sha256").write_text(
            f"{digest}  {path.name}\n", encoding="utf-8"
        )


def safe_extract(archive: str | Path, dest_dir: str | Path) -> list[Path]:
    """Extract a .zip or .tar(.gz/.bz2/.xz) into ``dest_dir``; the extracted files' paths.

    All members are checked first: paths leaving ``dest_dir`` (``..``, absolute, drive
    letters) and, in tars, links leading outside, paths through links and device files raise
    :class:`CaptionKitError`. Files go to a temporary folder in ``dest_dir``, then into place.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise CaptionKitError(f"{archive}: archive not found")
    root = dest_dir.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = [(_member_path(i.filename, archive, root), i.is_dir()) for i in zf.infolist()]
            names = [rel for rel, is_dir in infos if rel and not is_dir]
            return _extract_via_temp(archive, dest_dir, names, zf.extractall)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            names = _check_tar(members, archive, root)
            extract = partial(tf.extractall, members=members, **_TAR_FILTER)
            return _extract_via_temp(archive, dest_dir, names, extract)
    raise CaptionKitError(f"{archive}: not a .zip or .tar(.gz/.bz2/.xz) archive")


def _unsafe(archive: Path, member: str, why: str) -> CaptionKitError:
    """The refusal of one archive member (raised before anything is written)."""
    return CaptionKitError(f"{archive}: refusing to extract {member!r}: {why}; nothing extracted")


def _member_path(name: str, archive: Path, root: Path) -> str:
    """``name`` as a normalized relative POSIX path, refusing anything that leaves ``root``."""
    norm = name.replace("\\", "/")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if norm.startswith("/") or _DRIVE.match(norm) or ".." in parts:
        raise _unsafe(archive, name, f"its path escapes {root}")
    rel = "/".join(parts)
    if rel and not (root / rel).resolve().is_relative_to(root):
        raise _unsafe(archive, name, f"its path resolves outside {root}")
    return rel


def _check_tar(members: list[tarfile.TarInfo], archive: Path, root: Path) -> list[str]:
    """Check every tar member (path, type, link target); the relative paths of its files."""
    rels = [_member_path(m.name, archive, root) for m in members]
    links = {rel for m, rel in zip(members, rels, strict=True) if m.issym() or m.islnk()}
    files = []
    for member, rel in zip(members, rels, strict=True):
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise _unsafe(archive, member.name, "it is a device or other special file")
        parents = rel.split("/")[:-1]
        if any("/".join(parents[:i]) in links for i in range(1, len(parents) + 1)):
            raise _unsafe(archive, member.name, "its path goes through a link in the archive")
        if member.issym() or member.islnk():
            base = posixpath.dirname(rel) if member.issym() else ""
            _check_link(base, member.linkname, links, (archive, member.name, root))
        if rel and not member.isdir():
            files.append(rel)
    return files


def _check_link(base: str, target: str, links: set[str], where: tuple[Path, str, Path]) -> None:
    """Refuse a link whose target (from folder ``base``) is absolute, leaves the root, or goes
    through another link of the archive. ``where`` is (archive, member name, root)."""
    archive, name, root = where
    norm = target.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise _unsafe(archive, name, f"it links to the absolute path {target!r}")
    stack = [p for p in base.split("/") if p]
    steps = [p for p in norm.split("/") if p not in ("", ".")]
    for i, step in enumerate(steps):
        if step != "..":
            stack.append(step)
        elif stack:
            stack.pop()
        else:
            raise _unsafe(archive, name, f"it links to {target!r}, outside {root}")
        if i < len(steps) - 1 and "/".join(stack) in links:
            raise _unsafe(archive, name, f"its target {target!r} goes through another link")
    if not (root / "/".join(stack)).resolve().is_relative_to(root):
        raise _unsafe(archive, name, f"it links to {target!r}, outside {root}")


def _extract_via_temp(archive: Path, dest_dir: Path, names: list[str], extract: Any) -> list[Path]:
    """Run ``extract(tmp)`` into a temporary folder in ``dest_dir``, then move its contents in."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".captionkit-extract-", dir=dest_dir))
    try:
        extract(tmp)
        for child in sorted(tmp.iterdir()):
            _merge_move(child, dest_dir / child.name)
    except _EXTRACT_ERRORS as exc:
        raise CaptionKitError(f"{archive}: extraction into {dest_dir} failed ({exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [dest_dir / rel for rel in names]


def _merge_move(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, merging into folders that already exist, replacing files."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for child in sorted(src.iterdir()):
            _merge_move(child, dst / child.name)
    else:
        os.replace(src, dst)


def download_dataset(
    name: str,
    to: str | Path,
    progress: bool = True,
    base_url: str | None = None,
    keep_archives: bool = False,
) -> Path:
    """Download and extract every asset of dataset ``name`` into folder ``to``; ``to``.

    ``base_url`` (a mirror or a test server) replaces scheme, host and path prefix: each file
    is fetched from ``base_url + "/" + filename``. Archives are deleted once extracted unless
    ``keep_archives``. Finished assets are listed in ``to/.captionkit-download.json``, so a
    second call does nothing. Raises :class:`CaptionKitError` (unknown names list the known).
    """
    if name not in DATASETS_TO_DOWNLOAD:
        known = ", ".join(list_downloadable())
        raise CaptionKitError(f"unknown dataset {name!r}; downloadable datasets: {known}")
    to = Path(to).expanduser()
    to.mkdir(parents=True, exist_ok=True)
    stamp = _read_stamp(to)
    for asset in DATASETS_TO_DOWNLOAD[name]:
        done = stamp["assets"].get(asset.name) or {}
        if done.get("filename") == asset.filename and asset.sha256 in (None, done.get("sha256")):
            continue
        url = f"{base_url.rstrip('/')}/{asset.filename}" if base_url else asset.url
        path = download_file(url, to / asset.filename, asset.size, asset.sha256, progress)
        digest = _read_sidecar(path) or _hash_file(path)
        if asset.extract:
            safe_extract(path, to / asset.extract_to)
            if not keep_archives:
                path.unlink()
        stamp["assets"][asset.name] = {"filename": asset.filename, "sha256": digest, "url": url}
        _write_stamp(to, stamp)
    return to


def _read_stamp(to: Path) -> dict[str, Any]:
    """The download stamp of folder ``to`` (empty when missing or unreadable)."""
    try:
        assets = json.loads((to / STAMP_NAME).read_text(encoding="utf-8"))["assets"]
    except (OSError, ValueError, TypeError, KeyError):
        assets = None
    return {"version": 1, "assets": assets if isinstance(assets, dict) else {}}


def _write_stamp(to: Path, stamp: dict[str, Any]) -> None:
    """Write the stamp atomically (temporary file, then rename)."""
    tmp = to / (STAMP_NAME + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, to / STAMP_NAME)

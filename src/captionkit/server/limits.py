"""What the server accepts: a bounded, timed request body, and uploads that really are images
(content sniffed from the bytes, never trusted from the filename or the declared type)."""

from __future__ import annotations

import asyncio
import json

from captionkit.data.images import load_image
from captionkit.errors import ImageLoadError

FORMATS = {  # what the server accepts (sniff's names) -> MIME type and file extensions
    "JPEG": {"mime": "image/jpeg", "extensions": [".jpg", ".jpeg"]},
    "PNG": {"mime": "image/png", "extensions": [".png"]},
    "WEBP": {"mime": "image/webp", "extensions": [".webp"]},
    "GIF": {"mime": "image/gif", "extensions": [".gif"]},
    "BMP": {"mime": "image/bmp", "extensions": [".bmp"]},
    "TIFF": {"mime": "image/tiff", "extensions": [".tif", ".tiff"]},
}
SIGNATURES = (  # leading bytes -> format (WEBP: RIFF....WEBP, in sniff)
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
NOT_IMAGES = (  # leading bytes (lower-cased) -> what an upload that is no image is
    (b"%pdf", "a PDF document"),
    (b"pk\x03\x04", "a ZIP archive (or an Office document)"),
    (b"<svg", "an SVG drawing (vector images are not supported)"),
    (b"<?xml", "an XML document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
)


def accepted_formats() -> str:
    """The accepted formats as prose: ``"JPEG, PNG, WEBP, GIF, BMP or TIFF"``."""
    names = list(FORMATS)
    return ", ".join(names[:-1]) + " or " + names[-1]


def accept_attribute() -> str:
    """The file input's ``accept`` list: every accepted MIME type and extension."""
    return ",".join(x for f in FORMATS.values() for x in [f["mime"], *f["extensions"]])


def describe_bytes(data: bytes) -> str:
    """What a refused upload looks like, for an error message: a known kind of file, the
    start of its text, or its first bytes in hex (never a Python bytes literal)."""
    head = data[:64].lstrip().lower()
    kind = next((what for sig, what in NOT_IMAGES if head.startswith(sig)), None)
    if kind is not None:
        return kind
    try:
        text = data[:200].decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at byte 200 still counts as text
        text = data[: e.start].decode("utf-8") if e.start > 190 else ""
    text = " ".join(text.split())
    if text and all(c.isprintable() for c in text):
        return f'text starting "{text[:24]}{"..." if len(text) > 24 else ""}"'
    return "binary data starting with bytes " + data[:8].hex(" ")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` (4xx) and a reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def sniff(data: bytes) -> str | None:
    """The image format the bytes start with (a key of :data:`FORMATS`), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for sig, fmt in SIGNATURES if data.startswith(sig)), None)


def decode_upload(data: bytes, name: str, max_pixels: int, max_side: int):
    """Upload bytes -> RGB PIL image (EXIF orientation applied, any mode converted), or a
    :class:`RequestError`: 400 empty, 415 not an image, 413 too large, 422 undecodable."""
    if not data:
        raise RequestError(400, "empty upload: the image field holds no bytes")
    fmt = sniff(data)
    if fmt is None:
        raise RequestError(415, f"unsupported content: not a {accepted_formats()} image "
                                f"(the upload looks like {describe_bytes(data)})")
    try:
        image = load_image(data, max_pixels=max_pixels, name=name)
    except ImageLoadError as e:
        status = 413 if "exceeds" in e.reason or "decompression bomb" in e.reason else 422
        raise RequestError(status, f"{fmt} image could not be used: {e.reason}") from None
    if max(image.size) > max_side:
        raise RequestError(413, f"image is {image.width}x{image.height}; the longest side may "
                                f"be at most {max_side} pixels")
    return image, fmt


class BodyLimit:
    """ASGI wrapper: a request body larger than ``max_bytes`` gets 413 (refused from its
    Content-Length when declared, else as soon as it grows past the limit), one that takes
    longer than ``timeout_s`` to arrive gets 408, so slow clients cannot hold the server."""

    def __init__(self, app, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode() or "0"
        if not declared.isdigit():
            await _error(send, 400, "invalid Content-Length header")
            return
        if int(declared) > self.max_bytes:
            await _error(send, 413, f"request body of {declared} bytes exceeds the limit of "
                                    f"{self.max_bytes}")
            return
        body = await self._read(receive, send)
        if body is None:
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        await self.app(scope, replay, send)

    async def _read(self, receive, send) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline, chunks, size = loop.time() + self.timeout_s, [], 0
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                await _error(send, 408, f"request body not received within {self.timeout_s:g} s")
                return None
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _error(send, 413, f"request body exceeds the limit of {self.max_bytes} "
                                        "bytes")
                return None
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)


async def _error(send, status: int, reason: str) -> None:
    body = json.dumps({"error": reason, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

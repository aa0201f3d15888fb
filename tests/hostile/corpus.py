"""A generated corpus of hostile inputs: image files and caption files.

``build_images(folder)`` writes 60+ image files, each with what a reader must make of it:
``valid`` (odd but a real image: it must be captioned, with EXIF orientation applied and its
mode converted) or not (a clear error naming the file; batch jobs go on). ``build_caption_files``
writes Flickr8k token files and CSVs with bad encodings, BOMs, CRLF, empty and 10 MB lines,
missing columns and duplicate ids. Nothing is committed: the corpus is rebuilt by the tests.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Hostile:
    name: str
    valid: bool  # a real image that must be captioned (else: refused with a reason)
    size: tuple[int, int] | None = None  # (width, height) after EXIF orientation, if valid
    server: int = 200  # what POST /v1/captions must answer (default limits)


def _photo(w: int = 64, h: int = 48, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (200, 40, 40)
    return Image.fromarray(arr).convert(mode)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _valid_images() -> dict[str, tuple[bytes, tuple[int, int]]]:
    out = {
        "cmyk.jpg": (_save(_photo(mode="CMYK"), "JPEG"), (64, 48)),
        "grey.jpg": (_save(_photo(mode="L"), "JPEG"), (64, 48)),
        "progressive.jpg": (_save(_photo(), "JPEG", progressive=True), (64, 48)),
        "16bit.png": (_save(Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
                                            * 20), "PNG"), (64, 48)),
        "palette_transparent.png": (_save(_photo(mode="P"), "PNG", transparency=0), (64, 48)),
        "la.png": (_save(_photo(mode="LA"), "PNG"), (64, 48)),
        "rgba.png": (_save(_photo(mode="RGBA"), "PNG"), (64, 48)),
        "one_bit.png": (_save(_photo(mode="1"), "PNG"), (64, 48)),
        "1x1.png": (_save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), (1, 1)),
        "1x1.jpg": (_save(Image.new("RGB", (1, 1), (9, 9, 9)), "JPEG"), (1, 1)),
        "wide_100000x1.png": (_save(Image.new("L", (100_000, 1), 128), "PNG"), (100_000, 1)),
        "tall_1x20000.png": (_save(Image.new("L", (1, 20_000), 128), "PNG"), (1, 20_000)),
        "webp_lossy.webp": (_save(_photo(), "WEBP", quality=50), (64, 48)),
        "webp_lossless_alpha.webp": (_save(_photo(mode="RGBA"), "WEBP", lossless=True),
                                     (64, 48)),
        "bitmap.bmp": (_save(_photo(), "BMP"), (64, 48)),
        "tiff.tif": (_save(_photo(), "TIFF"), (64, 48)),
        "png_named.jpg": (_save(_photo(), "PNG"), (64, 48)),  # content wins over the name
        "no_extension": (_save(_photo(), "JPEG"), (64, 48)),
        "huge_but_legal.jpg": (_save(Image.linear_gradient("L").resize((7000, 5000)), "JPEG",
                                     quality=30), (7000, 5000)),
    }
    frames = [_photo(seed=i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["animated.gif"] = (buf.getvalue(), (64, 48))
    for orientation in range(1, 9):  # every EXIF orientation; 5-8 swap width and height
        exif = Image.Exif()
        exif[0x0112] = orientation
        size = (48, 64) if orientation >= 5 else (64, 48)
        out[f"exif_orientation_{orientation}.jpg"] = (_save(_photo(), "JPEG", exif=exif.tobytes()),
                                                      size)
    return out


def _invalid_images() -> dict[str, tuple[bytes, int]]:
    """name -> (bytes, the server's answer)."""
    jpeg, png = _save(_photo(256, 192), "JPEG"), _save(_photo(256, 192), "PNG")
    gif, webp = _save(_photo(), "GIF"), _save(_photo(256, 192), "WEBP")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside the IHDR chunk: its CRC no longer matches
    out = {
        "zero_bytes.jpg": (b"", 400),
        "text.jpg": (b"this is not a photo, it only has the name of one\n", 415),
        "page.html.jpg": (b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
                          415),
        "drawing.svg.png": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                            b'<rect width="10" height="10"/></svg>', 415),
        "data.json.jpg": (b'{"image": "not really"}', 415),
        "document.pdf.jpg": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", 415),
        "archive.zip.png": (b"PK\x03\x04" + bytes(40), 415),
        "random_bytes.jpg": (np.random.default_rng(1).bytes(4096), 415),
        "jpeg_magic_then_garbage.jpg": (b"\xff\xd8\xff\xe0" + np.random.default_rng(2).bytes(2000),
                                        422),
        "png_magic_only.png": (b"\x89PNG\r\n\x1a\n", 422),
        "png_bad_crc.png": (bytes(bad_crc), 422),
        "gif_header_only.gif": (gif[:13], 422),
        "webp_truncated.webp": (webp[: len(webp) // 2], 422),
        "bomb_30000x30000.png": (_save(Image.new("1", (30_000, 30_000)), "PNG"), 413),
        "bomb_20000x20000.gif": (_save(Image.new("P", (20_000, 20_000)), "GIF"), 413),
    }
    for frac in (0.1, 0.3, 0.5, 0.7, 0.95):
        out[f"truncated_{int(frac * 100)}pct.jpg"] = (jpeg[: int(len(jpeg) * frac)], 422)
        out[f"truncated_{int(frac * 100)}pct.png"] = (png[: int(len(png) * frac)], 422)
    return out


def build_images(folder: str | Path) -> list[Hostile]:
    """Write the image corpus into ``folder``; return what each file must give."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, (data, size) in _valid_images().items():
        (folder / name).write_bytes(data)
        server = 413 if max(size) > 20_000 or size[0] * size[1] > 50_000_000 else 200
        entries.append(Hostile(name, True, size, server))
    for name, (data, server) in _invalid_images().items():
        (folder / name).write_bytes(data)
        entries.append(Hostile(name, False, None, server))
    return entries


def build_caption_files(folder: str | Path) -> dict[str, tuple[Path, bool]]:
    """Flickr8k-layout datasets whose token file is hostile: name -> (dataset root, whether
    it must load). Each shares two real images; bad files must give a clear DatasetError."""
    folder = Path(folder)
    good = "a.jpg#0\ta red square .\na.jpg#1\ta square in red\nb.jpg#0\ta blue circle\n"
    variants = {
        "plain": (good.encode(), True),
        "utf8_bom": (b"\xef\xbb\xbf" + good.encode(), True),
        "crlf": (good.replace("\n", "\r\n").encode(), True),
        "empty_lines": (("\n\n" + good.replace("\n", "\n\n\n")).encode(), True),
        "trailing_spaces": (good.replace("\n", "   \n").encode(), True),
        "unicode_words": (("a.jpg#5\tun café près du lac 🚲\n" + good).encode(), True),
        "latin1": ("a.jpg#0\tun caf\xe9\n".encode("latin-1") + good.encode(), False),
        "utf16": (good.encode("utf-16"), False),
        "nul_bytes": (good.encode() + b"a.jpg#2\tnul\x00byte\n", False),
        "ten_mb_line": (good.encode() + b"b.jpg#1\t" + b"word " * 2_000_000 + b"\n", True),
        "missing_tab": (good.encode() + b"a.jpg#2 no tab here\n", False),
        "missing_caption": (good.encode() + b"a.jpg#2\t\n", False),
        "missing_number": (good.encode() + b"a.jpg\tno number\n", False),
        "duplicate_ids": (good.encode() + b"a.jpg#0\ta red square .\n", False),
        "unknown_image": (good.encode() + b"zzz.jpg#0\ta ghost\n", True),
        "empty_file": (b"", False),
        "binary_junk": (np.random.default_rng(3).bytes(3000), False),
    }
    out = {}
    for name, (tokens, ok) in variants.items():
        root = folder / name
        text = root / "Flickr8k_text"
        images = root / "Flicker8k_Dataset"
        text.mkdir(parents=True, exist_ok=True)
        images.mkdir(exist_ok=True)
        (text / "Flickr8k.token.txt").write_bytes(tokens)
        (text / "Flickr_8k.trainImages.txt").write_text("a.jpg\n")
        (text / "Flickr_8k.devImages.txt").write_text("b.jpg\n")
        for img in ("a.jpg", "b.jpg"):
            (images / img).write_bytes(_save(_photo(seed=len(img)), "JPEG"))
        out[name] = (root, ok)
    return out

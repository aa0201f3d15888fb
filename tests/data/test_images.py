import io

import numpy as np
import pytest
import torch
from PIL import Image

from captionkit.data.images import Preprocess, load_image
from captionkit.errors import ImageLoadError


def _save(im, path, **kw):
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "CMYK", "I;16", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    im = Image.new("RGB", (10, 8), (200, 30, 30)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = load_image(_save(im, tmp_path / f"x.{fmt.lower()}", format=fmt))
    assert out.mode == "RGB" and out.size == (10, 8)


def test_transparency_composited_on_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = load_image(_save(im, tmp_path / "a.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_image(_save(im, tmp_path / "r.jpg", exif=exif))
    assert out.size == (10, 20)


@pytest.mark.parametrize("content", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_files_name_the_file(tmp_path, content):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        load_image(p)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, "JPEG")
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="trunc.jpg"):
        load_image(p)


def test_missing_file():
    with pytest.raises(ImageLoadError, match="not found"):
        load_image("/nonexistent/x.png")


def test_preprocess_resizes_and_normalises():
    pre = Preprocess(size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = pre(Image.new("RGB", (20, 10), (255, 0, 127)))
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(8, 8)) and torch.allclose(x[1], -torch.ones(8, 8))

"""Safe image loading (EXIF orientation, mode conversion, clear errors) and preprocessing specs."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from captionkit.errors import ImageLoadError

MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb threshold, made explicit


def load_image(path: str | Path | bytes, max_pixels: int = MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """Open an image (a path, or the bytes of a file) as RGB with its EXIF orientation applied.

    Raises :class:`ImageLoadError` naming the file (``name`` for bytes) for anything that is
    not a decodable image, or that has more than ``max_pixels`` pixels (checked before the
    pixels are decoded, so a decompression bomb costs nothing).
    """
    is_bytes = isinstance(path, (bytes, bytearray))
    p = name or ("upload" if is_bytes else str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(path) if is_bytes else p) as im:
                if im.width * im.height > max_pixels:
                    raise ImageLoadError(p, f"{im.width}x{im.height} exceeds {max_pixels} pixels")
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(p, "file not found") from None
    except UnidentifiedImageError:
        raise ImageLoadError(p, "not an image or unsupported format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise ImageLoadError(p, str(e) or type(e).__name__) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is composited on white."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() or 1.0
        im = Image.fromarray((arr * (255.0 / hi)).astype(np.uint8), mode="L")
    if im.mode == "P" or im.mode in ("LA", "PA", "RGBA") or "transparency" in im.info:
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """How an encoder wants its pixels: square resize, then per-channel normalisation."""

    size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> normalised float tensor (3, size, size)."""
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
        x = x.permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

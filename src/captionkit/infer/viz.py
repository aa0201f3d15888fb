"""Attention-map figures: every generated word with its attention over the image.

Captions name colours, so the figure never tints the photo: where a word did not look, the
photo is dimmed towards black (by up to :data:`DIM`); where it looked hardest, the photo's own
colours show unchanged. A colour bar reads the dimming back as attention.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

PANEL = 288  # px: the longer side of each panel (the input and one per word)
DIM = 0.7  # how dark (0-1) the mask makes a region the word did not look at
DPI = 100
PAD, WORD_H, LINE_H, BAR_W = 16, 30, 22, 110  # px: gaps, a word's title, a title line, bar


def upsample(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One (grid_h, grid_w) map -> (H, W) for an image of ``size`` = (W, H), smoothly, in [0, 1]."""
    a = attention.astype(np.float32)
    a = (a - a.min()) / (a.max() - a.min() + 1e-8)
    return _resize(a, size)


def relative_to_peak(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One (grid_h, grid_w) map -> (H, W) for ``size`` = (W, H), smoothly, as a share of the
    map's peak: 1 where the word looked hardest, 0 where it did not look; a uniform map is 1
    everywhere (it looked at everything alike)."""
    a = np.clip(attention.astype(np.float32), 0, None)
    return np.clip(_resize(a / max(float(a.max()), 1e-12), size), 0.0, 1.0)


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize(size, Image.BILINEAR))


def dimming_mask(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The overlay for one map: black RGBA (H, W, 4), opaque by ``DIM * (1 - share of the
    peak)``, so attended regions keep their colours and the rest darkens."""
    rgba = np.zeros((size[1], size[0], 4), np.float32)
    rgba[..., 3] = DIM * (1.0 - relative_to_peak(attention, size))
    return rgba


def attention_figure(image: Image.Image, words: list[str], attention: np.ndarray,
                     path: str | Path, title: str | None = None, cols: int = 5, *,
                     name: str | None = None, panel: int = PANEL) -> Path:
    """Save a full-colour (RGB) PNG: a title (``name``, the image's file name or id, then
    ``title``, by default the caption), the input image, one panel per word with what it did
    not look at dimmed (``attention`` (T, grid_h, grid_w)), and a colour bar. Each panel's
    longer side is ``panel`` pixels; ``cols`` panels a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = image.convert("RGB")
    scale = panel / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.LANCZOS)  # drawn pixel for pixel
    pw, ph = img.size
    cols = min(cols, len(words) + 1)
    rows = math.ceil((len(words) + 1) / cols)
    width = PAD + cols * (pw + PAD) + BAR_W
    heading = _heading(name, title or " ".join(words), width)
    top = PAD + LINE_H * (heading.count("\n") + 1) + PAD // 2
    height = top + rows * (WORD_H + ph + PAD)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(0.5, 1 - PAD / height, heading, ha="center", va="top", fontsize=12)

    def axes(k: int, w: float, h: float, dx: float = 0):
        x, y = PAD + (k % cols) * (pw + PAD) + dx, top + (k // cols) * (WORD_H + ph + PAD)
        return fig.add_axes((x / width, 1 - (y + WORD_H + h) / height, w / width, h / height))

    for k, label in enumerate(["input", *words]):
        ax = axes(k, pw, ph)
        ax.axis("off")
        ax.imshow(img, interpolation="nearest")
        if k:
            ax.imshow(dimming_mask(attention[k - 1], img.size), interpolation="nearest")
        ax.set_title(label, fontsize=12)
    _colour_bar(fig, axes(cols - 1, 14, ph, dx=pw + PAD + 6))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:  # full colour: a palette would shift the photo's colours
        im.convert("RGB").save(path, format="PNG", optimize=True)
    return path


def _heading(name: str | None, caption: str, width: int) -> str:
    """The figure's title, wrapped to the figure's width (about 9 px a character)."""
    text = f"{name}: \u201c{caption}\u201d" if name else caption
    return textwrap.fill(text, max(20, (width - 2 * PAD) // 9))


def _colour_bar(fig, cax) -> None:
    """The dimming as a scale: dark = the word did not look there, white = its peak."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize

    dim = LinearSegmentedColormap.from_list("dim", [(1 - DIM,) * 3, (1.0, 1.0, 1.0)])
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), dim), cax=cax, ticks=[0, 0.5, 1])
    bar.set_label("attention (1 = the word's peak)", fontsize=10)
    bar.ax.tick_params(labelsize=9)

"""Attention-map figures: every generated word with its heatmap over the image."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image


def upsample(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One (grid_h, grid_w) map -> (H, W) for an image of ``size`` = (W, H), smoothly, in [0, 1]."""
    a = attention.astype(np.float32)
    a = (a - a.min()) / (a.max() - a.min() + 1e-8)
    return np.asarray(Image.fromarray(a).resize(size, Image.BILINEAR))


def attention_figure(image: Image.Image, words: list[str], attention: np.ndarray,
                     path: str | Path, title: str | None = None, cols: int = 5,
                     max_side: int = 256) -> Path:
    """Save a PNG grid: the image, then one panel per word with its attention overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = image.convert("RGB")
    img.thumbnail((max_side, max_side))
    panels = len(words) + 1
    cols = min(cols, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(img)
    axes.flat[0].set_title("input", fontsize=10)
    for i, word in enumerate(words):
        ax = axes.flat[i + 1]
        ax.imshow(img)
        ax.imshow(upsample(attention[i], img.size), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(word, fontsize=11)
    fig.suptitle(title or " ".join(words), fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:  # a 256-colour palette keeps the file small
        im.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)
    return path

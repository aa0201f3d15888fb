"""Fixtures of the batch-captioning tests: a folder of small generated images, some broken."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

MODES = ("RGB", "L", "RGBA", "P")


@dataclass(frozen=True)
class ImageSet:
    """A folder of ``len(good) + len(bad)`` image files (absolute paths), in subfolders,
    with one ``notes.txt`` that is not an image."""

    root: Path
    good: list[str]
    bad: list[str]

    @property
    def files(self) -> list[str]:
        return sorted(self.good + self.bad)


def make_images(root: Path, count: int, broken: int, seed: int = 0) -> ImageSet:
    """``count`` files under ``root``: ``count - broken`` small PNG/JPEG pictures (coloured
    shapes on noise, in several modes and sizes) and ``broken`` files that are not images
    (text, a truncated JPEG, an empty PNG)."""
    rng = np.random.default_rng(seed)
    good, bad = [], []
    for i in range(count - broken):
        size = int(rng.integers(40, 120))
        pixels = rng.integers(0, 255, (size, size, 3), np.uint8)  # (H, W, 3)
        im = Image.fromarray(pixels)
        x, y = (int(v) for v in rng.integers(0, size // 2, 2))
        ImageDraw.Draw(im).rectangle((x, y, x + size // 3, y + size // 3),
                                     fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        mode = MODES[i % len(MODES)]
        im = im.convert(mode)
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        jpeg = mode in ("RGB", "L") and i % 2 == 0
        path = sub / (f"img{i:03d}.jpg" if jpeg else f"img{i:03d}.PNG" if i % 7 == 0
                      else f"img{i:03d}.png")
        im.save(path)
        good.append(str(path))
    jpeg = next(Path(p).read_bytes() for p in good if p.endswith(".jpg"))
    makers = [lambda p: p.write_text("not an image"),
              lambda p: p.write_bytes(jpeg[: len(jpeg) // 3]),  # a truncated JPEG
              lambda p: p.write_bytes(b"")]
    for j in range(broken):
        path = root / f"part{j % 3}" / f"broken{j}.{'jpg' if j % 3 != 2 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        makers[j % len(makers)](path)
        bad.append(str(path))
    (root / "notes.txt").write_text("a file the folder listing skips")
    return ImageSet(root, good, bad)


@pytest.fixture(scope="session")
def batch_images(tmp_path_factory) -> ImageSet:
    """200 files: 194 small images and 6 broken ones."""
    return make_images(tmp_path_factory.mktemp("batch_images"), 200, 6)


@pytest.fixture(scope="session")
def few_images(tmp_path_factory) -> ImageSet:
    """36 files: 33 small images and 3 broken ones, for the local engine's tests."""
    return make_images(tmp_path_factory.mktemp("few_images"), 36, 3, seed=1)

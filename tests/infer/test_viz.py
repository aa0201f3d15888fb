import matplotlib.figure
import numpy as np
import pytest
from PIL import Image, ImageDraw

from captionkit.infer.viz import DIM, PANEL, attention_figure, relative_to_peak, upsample

GREY = (128, 128, 128)
SIDE, GRID = 280, 7  # the test image: 7x7 attention cells of 40 px
RED_CELL, BLUE_CELL = (1, 1), (5, 5)  # (row, col) of the red square and the blue disc


def scene() -> Image.Image:
    """A grey square image with a pure red square filling one cell, a pure blue disc in
    another: the colours a caption would name."""
    im = Image.new("RGB", (SIDE, SIDE), GREY)
    d = ImageDraw.Draw(im)
    cell = SIDE // GRID
    r, c = RED_CELL
    d.rectangle([c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1], fill=(255, 0, 0))
    r, c = BLUE_CELL
    d.ellipse([c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1], fill=(0, 0, 255))
    return im


def peaked(*cells: tuple[int, int]) -> np.ndarray:
    """One (GRID, GRID) map per cell, all its weight there (a little everywhere else)."""
    att = np.full((len(cells), GRID, GRID), 1e-4)
    for i, (r, c) in enumerate(cells):
        att[i, r, c] = 1.0
    return att / att.sum((1, 2), keepdims=True)


def _runs(mask: np.ndarray, at_least: int = 1) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D mask, at least ``at_least`` long."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(s, e) for s, e in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True)
            if e - s >= at_least]


def _panels(px: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of every image panel in a figure (H, W, 3), row by row: the
    blocks of non-white pixels at least 200 px wide (text and the colour bar are not)."""
    ink = px.min(2) < 240  # (H, W)
    rows = np.array([any(e - s >= 200 for s, e in _runs(r)) for r in ink])
    return [(r0, r1, c0, c1) for r0, r1 in _runs(rows, 20)
            for c0, c1 in _runs(ink[r0:r1].mean(0) > 0.95, 200)]


def _figure(tmp_path, words, attention, image=None, **kw) -> np.ndarray:
    out = attention_figure(image or scene(), words, attention, tmp_path / "sub" / "att.png", **kw)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode in ("RGB", "RGBA")  # full colour, no palette
        return np.asarray(im).astype(int)[..., :3]  # (H, W, 3)


def _at(px, box, row: float, col: float, k: int = 3) -> np.ndarray:
    """Mean colour of a (2k+1)^2 patch at the centre of grid cell (row, col) of a panel."""
    top, bottom, left, right = box
    y = top + round((row + 0.5) / GRID * (bottom - top))
    x = left + round((col + 0.5) / GRID * (right - left))
    return px[y - k:y + k + 1, x - k:x + k + 1].reshape(-1, 3).mean(0)


def test_upsample_range_and_size():
    a = upsample(np.arange(36, dtype=float).reshape(6, 6), (96, 80))
    assert a.shape == (80, 96) and a.min() >= 0 and a.max() <= 1.0 + 1e-6
    assert a[0, 0] == a.min() and a[-1, -1] == a.max()  # the map's corners stay its corners


def test_relative_to_peak():
    one = relative_to_peak(peaked((0, 0))[0], (70, 70))
    assert one.shape == (70, 70) and one[2, 2] > 0.99 and one[-5, -5] < 0.01
    uniform = relative_to_peak(np.full((7, 7), 1 / 49), (70, 70))
    np.testing.assert_allclose(uniform, 1.0, atol=1e-5)  # looked at everything alike


def test_panels_are_large_and_the_png_full_colour(tmp_path):
    px = _figure(tmp_path, ["a", "red", "square"], peaked(RED_CELL, BLUE_CELL, (3, 3)))
    boxes = _panels(px)
    assert len(boxes) == 4  # the input, then one per word, on one row
    assert len({(t, b) for t, b, _, _ in boxes}) == 1
    for t, b, left, right in boxes:
        assert min(b - t, right - left) >= 256 and abs((b - t) - PANEL) <= 2
    small = Image.new("RGB", (48, 32), GREY)  # a small image is drawn large too
    boxes = _panels(_figure(tmp_path, ["a"], peaked(RED_CELL), image=small))
    assert [abs((r - left) - PANEL) <= 2 for _, _, left, r in boxes] == [True, True]


def test_colours_stay_true_where_the_word_looked(tmp_path):
    px = _figure(tmp_path, ["red", "disc"], peaked(RED_CELL, BLUE_CELL))
    inp, red_word, disc_word = _panels(px)
    r, g, b = _at(px, red_word, *RED_CELL)  # where "red" looked: the square, unchanged
    assert r >= 235 and g <= 20 and b <= 20, (r, g, b)
    r, g, b = _at(px, disc_word, *BLUE_CELL)
    assert b >= 235 and r <= 20 and g <= 20, (r, g, b)
    r, g, b = _at(px, disc_word, *RED_CELL)  # not looked at: darker, still plainly red
    assert r > 4 * max(g, b, 1) and r < 0.5 * 255
    for box in (inp, red_word, disc_word):  # grey stays grey: the mask adds no hue
        grey = _at(px, box, 3, 0)
        assert grey.max() - grey.min() <= 3, grey
    far = _at(px, red_word, 5, 1)[0]  # a grey cell far from where "red" looked
    assert far == pytest.approx(GREY[0] * (1 - DIM), abs=8)
    assert _at(px, inp, 5, 1)[0] == pytest.approx(GREY[0], abs=2)  # the input: untouched


def test_title_names_the_image_and_a_colour_bar_reads_the_dimming(tmp_path, monkeypatch):
    texts = []
    real = matplotlib.figure.Figure.text
    monkeypatch.setattr(matplotlib.figure.Figure, "text",
                        lambda self, x, y, s, *a, **kw: texts.append(s) or real(self, x, y, s,
                                                                               *a, **kw))
    px = _figure(tmp_path, ["a", "red", "square"], peaked(RED_CELL, BLUE_CELL, (3, 3)),
                 name="IMG_0042.jpg")
    assert texts == ["IMG_0042.jpg: \u201ca red square\u201d"]
    right = _panels(px)[-1][3]
    bar = px[:, right:].min(2)  # (H, w): grey levels right of the last panel
    shaded = np.flatnonzero(((bar > 60) & (bar < 250)).sum(0) >= 200)  # the bar's columns
    col = bar[:, shaded[len(shaded) // 2]]
    frame = np.flatnonzero(col < 40)  # its outline, above and below the gradient
    shade = col[frame[0] + 2:frame[-1] - 1]  # top to bottom: white (the peak) to dark
    assert len(shade) >= 200 and shade[0] >= 245
    assert shade[-1] == pytest.approx(255 * (1 - DIM), abs=8)
    assert np.all(np.diff(shade) <= 1)  # darker all the way down
    texts.clear()
    _figure(tmp_path, ["a"], peaked(RED_CELL), title="my title")
    assert texts == ["my title"]


def test_figure_wraps_rows(tmp_path):
    words = [f"w{i}" for i in range(7)]
    cells = [(i % GRID, (3 * i) % GRID) for i in range(7)]
    px = _figure(tmp_path, words, peaked(*cells))
    boxes = _panels(px)
    assert len(boxes) == 8 and len({t for t, _, _, _ in boxes}) == 2  # 2 rows of 5 and 3
    assert [box[2] for box in boxes[5:]] == [box[2] for box in boxes[:3]]  # same columns
    for box, cell in zip(boxes[1:], cells, strict=True):  # each word is brightest where it
        lit = _at(px, box, *cell).mean()  # looked, dimmest elsewhere
        others = [_at(px, box, r, c).mean() for r in range(GRID) for c in range(GRID)
                  if (r, c) not in (cell, RED_CELL, BLUE_CELL)]  # grey cells
        assert lit > max(others) + 20

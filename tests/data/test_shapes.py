import numpy as np
import pytest
from PIL import Image

from captionkit.data.shapes import (
    COLOURS,
    SHAPES,
    Shape,
    attention_hit_rate,
    ensure_shapes,
    generate_shapes,
    read_shapes,
    word_outcomes,
)
from captionkit.data.vocab import tokenize


def test_generation_is_seeded_and_complete(tmp_path):
    a = generate_shapes(tmp_path / "a", 6, 2, 2, seed=3)
    b = generate_shapes(tmp_path / "b", 6, 2, 2, seed=3)
    assert [r.captions for r in a] == [r.captions for r in b]
    assert [r.split for r in a].count("train") == 6 and [r.split for r in a].count("test") == 2
    for r in a:
        assert len(r.captions) == 5 and len(set(r.captions)) == 5
        im = Image.open(r.image)
        assert im.size == (96, 96)
        assert 1 <= len(r.meta["objects"]) <= 3


def test_captions_name_every_object(tmp_path):
    for r in generate_shapes(tmp_path, 30, 0, 0, seed=0):
        first = tokenize(r.captions[0])
        for o in r.meta["objects"]:
            assert o.colour in first and o.shape in first


def test_boxes_hold_the_object_colour(tmp_path):
    for r in generate_shapes(tmp_path, 10, 0, 0, seed=0):
        px = np.asarray(Image.open(r.image).convert("RGB")).astype(int)
        for o in r.meta["objects"]:
            x0, y0, x1, y1 = o.box
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2 + 3  # a little below centre: inside triangles
            assert np.abs(px[cy, cx] - np.array(COLOURS[o.colour])).max() <= 25


def test_ensure_regenerates_only_when_parameters_change(tmp_path):
    ensure_shapes(tmp_path, 4, 1, 1, 0)
    stamp = (tmp_path / "shapes.json").stat().st_mtime_ns
    ensure_shapes(tmp_path, 4, 1, 1, 0)
    assert (tmp_path / "shapes.json").stat().st_mtime_ns == stamp
    assert len(ensure_shapes(tmp_path, 5, 1, 1, 0)) == 7
    assert len(read_shapes(tmp_path)) == 7


def test_attention_hit_rate_counts_colour_and_shape_words():
    red = Shape("red", "circle", "small", 0, (6, 6, 26, 26))  # top-left cell
    blue = Shape("blue", "square", "large", 8, (65, 65, 95, 95))  # bottom-right cell
    grid, N = (6, 6), 36
    on_red = np.zeros(N)
    on_red[7] = 1.0  # row 1, col 1: centre (24, 24), inside the red box
    on_blue = np.zeros(N)
    on_blue[35] = 1.0  # centre (88, 88)
    caption = "a small red circle above a large blue square"
    alphas = np.stack([on_red] * 4 + [on_blue] * 5)  # one row per word
    assert attention_hit_rate(caption, alphas, grid, [red, blue]) == (4, 4)
    wrong = np.stack([on_blue] * 9)
    assert attention_hit_rate(caption, wrong, grid, [red, blue]) == (2, 4)
    # a word naming an object that is not in the image is a miss
    assert attention_hit_rate("a green circle", alphas, grid, [red, blue]) == (0, 2)


def test_weighted_hit_rate_counts_each_word_by_how_much_it_looked():
    red = Shape("red", "circle", "small", 0, (6, 6, 26, 26))
    blue = Shape("blue", "square", "large", 8, (65, 65, 95, 95))
    grid, N = (6, 6), 36
    looked, elsewhere = np.zeros(N), np.zeros(N)
    looked[7] = 0.9  # 1 - beta = 0.9, on the red circle
    elsewhere[35] = 0.01  # beta = 0.99: the word came from the language model; argmax is noise
    caption = "a red circle"
    alphas = np.stack([looked, looked, elsewhere])
    assert attention_hit_rate(caption, alphas, grid, [red, blue]) == (1, 2)  # strict: a miss
    hits, total = attention_hit_rate(caption, alphas, grid, [red, blue], weighted=True)
    assert total == pytest.approx(0.91) and hits == pytest.approx(0.9)
    # maps that sum to one (no sentinel) weigh every word the same: the strict counts
    full = np.stack([looked / 0.9, looked / 0.9, elsewhere / 0.01])
    assert attention_hit_rate(caption, full, grid, [red, blue], weighted=True) == \
        pytest.approx((1, 2))
    assert len(SHAPES) == 3


def test_word_outcomes_say_where_each_colour_and_shape_word_looked():
    red = Shape("red", "circle", "small", 0, (6, 6, 26, 26))  # top-left cell
    blue = Shape("blue", "square", "large", 8, (65, 65, 95, 95))  # bottom-right cell
    grid, N = (6, 6), 36
    on_red, on_blue, corner = np.zeros(N), np.zeros(N), np.zeros(N)
    on_red[7], on_blue[35], corner[5] = 1.0, 1.0, 0.25  # cell 5: top-right, no object
    caption = "a red circle and a blue square and a green circle"
    alphas = np.stack([on_red, on_red, on_blue, on_red, on_red, on_blue, corner, on_red,
                       on_red, on_red, on_red])
    assert word_outcomes(caption, alphas, grid, [red, blue]) == [
        ("colour", "named", 1.0), ("shape", "other object", 1.0),
        ("colour", "named", 1.0), ("shape", "background", 0.25),
        ("colour", "no object", 1.0), ("shape", "no object", 1.0)]
    # the hit rate counts exactly the "named" outcomes
    assert attention_hit_rate(caption, alphas, grid, [red, blue]) == (2, 6)

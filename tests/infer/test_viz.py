import numpy as np
from PIL import Image

from captionkit.infer.viz import attention_figure, upsample

GREY = (128, 128, 128)  # the input image: colourless, so only the attention overlays are coloured


def test_upsample_range_and_size():
    a = upsample(np.arange(36, dtype=float).reshape(6, 6), (96, 80))
    assert a.shape == (80, 96) and a.min() >= 0 and a.max() <= 1.0 + 1e-6
    assert a[0, 0] == a.min() and a[-1, -1] == a.max()  # the map's corners stay its corners


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _panels(px: np.ndarray) -> list[np.ndarray]:
    """The coloured (attention-overlaid) panels of a figure (H, W, 3), row by row."""
    coloured = (px.max(2) - px.min(2)) > 30  # (H, W); grey image, white page, black text: False
    return [px[r0:r1, c0:c1] for r0, r1 in _runs(coloured.any(1))
            for c0, c1 in _runs(coloured[r0:r1].any(0))]


def _corner_warmth(panel: np.ndarray) -> dict[str, float]:
    """Mean red minus blue in each corner patch (jet: hot is red, cold is blue)."""
    h, w = panel.shape[:2]
    k = min(h, w) // 8
    warm = panel[..., 0] - panel[..., 2]  # (h, w)
    return {"tl": warm[:k, :k].mean(), "tr": warm[:k, -k:].mean(),
            "bl": warm[-k:, :k].mean(), "br": warm[-k:, -k:].mean()}


def _figure(tmp_path, words: list[str], attention: np.ndarray) -> np.ndarray:
    out = attention_figure(Image.new("RGB", (120, 90), GREY), words, attention,
                           tmp_path / "sub" / "att.png")
    with Image.open(out) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)  # (H, W, 3)


def test_attention_figure_shows_where_each_word_looks(tmp_path):
    att = np.full((3, 7, 7), 1 / 49)  # third word: uniform attention
    att[0], att[1] = 0, 0
    att[0, 0, 0] = 1.0  # first word: the top-left cell
    att[1, -1, -1] = 1.0  # second word: the bottom-right cell
    px = _figure(tmp_path, ["a", "red", "dog"], att)
    assert px.shape == (round(2.4 * 80), round(2.2 * 4 * 80), 3)  # 1 row of 4 panels, dpi 80
    panels = _panels(px)
    assert len(panels) == 3  # one per word, in order; the grey input panel is not coloured
    first, second, uniform = (_corner_warmth(p) for p in panels)
    assert first["tl"] > max(first["tr"], first["bl"], first["br"]) + 80
    assert second["br"] > max(second["tl"], second["tr"], second["bl"]) + 80
    assert max(uniform.values()) - min(uniform.values()) < 5  # no contrast
    assert abs(uniform["tl"] - first["br"]) < 5  # uniform attention looks like none at all
    grey = (np.abs(px - GREY).max(2) <= 3).sum(0) > panels[0].shape[0] / 2  # (W,)
    (start, end), = _runs(grey)  # the input image, left of the first word's panel
    assert end - start > 0.8 * panels[0].shape[1]


def test_attention_figure_wraps_rows(tmp_path):
    att = np.full((7, 7, 7), 1 / 49)
    att[6] = 0
    att[6, 0, -1] = 1.0  # the last word, alone on the second row: the top-right cell
    px = _figure(tmp_path, [f"w{i}" for i in range(7)], att)
    assert px.shape == (round(2.4 * 2 * 80), round(2.2 * 5 * 80), 3)  # 8 panels: 2 rows of 5
    panels = _panels(px)
    assert len(panels) == 7
    last = _corner_warmth(panels[-1])
    assert last["tr"] > max(last["tl"], last["bl"], last["br"]) + 80
    for p in panels[:-1]:
        w = _corner_warmth(p)
        assert max(w.values()) - min(w.values()) < 5

import numpy as np
from PIL import Image

from captionkit.infer.viz import attention_figure, upsample


def test_upsample_range_and_size():
    a = upsample(np.arange(36, dtype=float).reshape(6, 6), (96, 80))
    assert a.shape == (80, 96) and a.min() >= 0 and a.max() <= 1.0 + 1e-6


def test_attention_figure_writes_png(tmp_path):
    att = np.random.default_rng(0).random((3, 7, 7))
    out = attention_figure(Image.new("RGB", (300, 200), "white"), ["a", "red", "dog"], att,
                           tmp_path / "sub" / "att.png")
    im = Image.open(out)
    assert im.format == "PNG" and im.width > 300

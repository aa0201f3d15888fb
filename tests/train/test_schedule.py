import pytest

from captionkit.errors import CaptionKitError
from captionkit.train.schedule import lr_multiplier


def test_warmup_then_constant_or_cosine():
    assert lr_multiplier(0, 100, "constant") == 1.0
    assert lr_multiplier(0, 100, "constant", warmup_steps=10) == pytest.approx(0.1)
    assert lr_multiplier(10, 110, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert lr_multiplier(60, 110, "cosine", warmup_steps=10) == pytest.approx(0.5)
    assert lr_multiplier(110, 110, "cosine", warmup_steps=10) == pytest.approx(0.0)


def test_step_schedule():
    f = [lr_multiplier(s, 100, "step") for s in (0, 49, 50, 74, 75, 99)]
    assert f == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_pure_and_monotone_after_warmup():
    a = [lr_multiplier(s, 200, "cosine", 20) for s in range(200)]
    assert a == [lr_multiplier(s, 200, "cosine", 20) for s in range(200)]
    assert all(x >= y for x, y in zip(a[20:], a[21:], strict=False))
    assert all(x < y for x, y in zip(a[:19], a[1:20], strict=True))


def test_unknown_schedule():
    with pytest.raises(CaptionKitError, match="zigzag"):
        lr_multiplier(0, 1, "zigzag")

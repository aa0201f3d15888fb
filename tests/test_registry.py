"""The name -> factory registry: duplicates raise, unknown names list the choices, metadata."""

import copy

import pytest

from captionkit.errors import CaptionKitError, UnknownNameError
from captionkit.registry import Registry


@pytest.fixture()
def reg() -> Registry:
    r = Registry("widget")

    @r.register("b", size=2, tags=("x",))
    def b():
        return "b"

    r.register("a")(lambda: "a")
    return r


def test_register_and_get(reg):
    assert reg.get("b")() == "b" and reg.get("a")() == "a"
    assert reg.names() == ["a", "b"] and len(reg) == 2
    assert "a" in reg and "c" not in reg


def test_register_returns_the_factory_unchanged():
    r = Registry("widget")

    def f():
        return 1

    assert r.register("f", k=1)(f) is f


def test_duplicate_name_raises(reg):
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", size=9)(lambda: None)
    assert reg.get("a")() == "a" and dict(reg.info("a")) == {}  # the first entry is kept


@pytest.mark.parametrize("lookup", ["get", "info"])
def test_unknown_name_lists_the_choices(reg, lookup):
    with pytest.raises(UnknownNameError) as info:
        getattr(reg, lookup)("zz")
    err = info.value
    assert isinstance(err, CaptionKitError) and not isinstance(err, KeyError)
    assert str(err) == "unknown widget 'zz'; choose one of: a, b"
    assert (err.kind, err.name, err.choices) == ("widget", "zz", ("a", "b"))


def test_unknown_name_error_survives_a_copy():
    """Rebuilt through __reduce__ (as when it crosses a DataLoader worker's process boundary;
    copied here, since no test unpickles anything)."""
    err = copy.deepcopy(UnknownNameError("widget", "zz", ["a"]))
    assert str(err) == "unknown widget 'zz'; choose one of: a" and err.choices == ("a",)


def test_info_round_trip(reg):
    assert dict(reg.info("b")) == {"size": 2, "tags": ("x",)}
    assert dict(reg.info("a")) == {}


def test_info_is_read_only(reg):
    with pytest.raises(TypeError):
        reg.info("b")["size"] = 3  # type: ignore[index]
    assert reg.info("b")["size"] == 2

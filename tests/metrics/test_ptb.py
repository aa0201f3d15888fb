"""The pure-Python PTB tokenizer against outputs of pycocoevalcap's Java PTBTokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captionkit.metrics import ptb

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "ptb_tricky.json").read_text("utf-8"))
# Characters the jar treats as line breaks: a caption holding one spills into the next line(s).
JAVA_LINE_BREAKS = "\r\x0b\x0c\x85\u2028\u2029"


def test_fixture_is_big_enough():
    assert len(FIXTURE) >= 80
    assert all(set(e) == {"caption", "ptb"} for e in FIXTURE)


@pytest.mark.parametrize("entry", FIXTURE, ids=range(len(FIXTURE)))
def test_tokenize_matches_stored_java_output(entry):
    assert ptb.tokenize(entry["caption"]) == entry["ptb"]


def test_tokenize_all_keeps_ids_order_and_counts():
    captions = {"z": ["A dog.", "Two CATS, sleeping!"], "a": ["a bird"], "m": []}
    out = ptb.tokenize_all(captions)
    assert list(out) == ["z", "a"]  # like upstream, an id without captions gets no entry
    assert out == {"z": ["a dog", "two cats sleeping"], "a": ["a bird"]}
    assert ptb.tokenize_all({}) == {}


def test_tokenize_all_mirrors_upstream_batching():
    # Expected values recorded from the Java PTBTokenizer.  The lexer sees the next caption: an
    # acronym's period before a sentence-starting word becomes a separate (dropped) token...
    assert ptb.tokenize_all({"1": ["the letter x."], "2": ["The dog"]}) == {
        "1": ["the letter x"], "2": ["the dog"]}
    assert ptb.tokenize("the letter x.") == "the letter x."
    # ...and a line break the jar honours inside a caption shifts the later captions.
    assert ptb.tokenize_all({"a": ["two dogs\rplaying", "x"], "b": ["y"]}) == {
        "a": ["two dogs", "playing"], "b": ["x"]}
    assert ptb.tokenize("a new\nline") == "a new line"


def test_punctuation_list_is_pycocoevalcap_s():
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    assert set(PUNCTUATIONS) == ptb.PUNCTUATIONS


def test_java_tokenize_all_needs_java(monkeypatch):
    monkeypatch.setattr(ptb.shutil, "which", lambda name: None)
    assert not ptb.java_available()
    with pytest.raises(RuntimeError, match="java is not on PATH"):
        ptb.java_tokenize_all({"1": ["a dog"]})


@pytest.mark.skipif(not ptb.java_available(), reason="needs java for the official PTBTokenizer")
def test_java_still_agrees_with_fixture_and_ours():
    captions = [e["caption"] for e in FIXTURE]
    expected = [e["ptb"] for e in FIXTURE]
    # One batch for the fixture (ordered so no caption changes the one before it), one run per
    # caption holding a line break, which would otherwise shift every later caption.
    plain = {f"{i:03d}": [c] for i, c in enumerate(captions) if not set(c) & set(JAVA_LINE_BREAKS)}
    java = ptb.java_tokenize_all(plain)
    assert java == ptb.tokenize_all(plain)
    for i, c in enumerate(captions):
        key = f"{i:03d}"
        got = java[key][0] if key in plain else ptb.java_tokenize_all({key: [c]})[key][0]
        assert got == expected[i] == ptb.tokenize(c), c

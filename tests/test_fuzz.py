"""Property-based fuzzing (hypothesis) of the caption-file parsers, the vocabulary, the two
tokenizers and image loading. ``make test`` runs the bounded ``ci`` profile; a long run:

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_fuzz.py

Each property: the function returns a well-formed value or raises captionkit's own error type
with a message, never anything else, and never hangs (a deadline per example)."""

import io
import os
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from captionkit.data.csv_captions import read_csv
from captionkit.data.flickr8k import _read_tokens
from captionkit.data.images import load_image
from captionkit.data.vocab import SPECIALS, Vocabulary, tokenize
from captionkit.errors import DatasetError, ImageLoadError
from captionkit.metrics.ptb import PUNCTUATIONS
from captionkit.metrics.ptb import tokenize as ptb_tokenize

settings.register_profile("ci", max_examples=150, deadline=timedelta(seconds=5),
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=20_000, deadline=timedelta(seconds=5),
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

lines = st.text(st.characters(blacklist_categories=["Cs"]), max_size=80)
token_line = st.one_of(
    lines,
    st.builds(lambda n, k, c: f"{n}.jpg#{k}\t{c}", st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True),
              st.integers(0, 9), lines),
)


@given(st.lists(token_line, max_size=12), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_flickr8k_token_parser(tmp_path_factory, rows, newline, bom):
    path = tmp_path_factory.mktemp("tok") / "Flickr8k.token.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(rows).encode())
    try:
        caps = _read_tokens(path)
    except DatasetError as e:
        assert str(path) in str(e)
        return
    assert caps and all(c and c == c.strip() for cs in caps.values() for c in cs)


@given(st.binary(max_size=600))
@example(b"image,caption\n\x00,\xff\n")
@example(b"\xef\xbb\xbfimage,caption,split\r\na.jpg,a cat,val\r\n")
def test_csv_reader_on_any_bytes(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("csv")
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "captions.csv").write_bytes(data)
    try:
        records = read_csv(folder)
    except DatasetError as e:
        assert "captions.csv" in str(e)
        return
    assert all(r.captions and r.split in ("train", "dev", "test") for r in records)


@given(st.lists(lines, max_size=20), st.integers(1, 3), st.integers(1, 30))
def test_vocabulary_round_trips(captions, min_freq, max_len):
    vocab = Vocabulary.build(captions, min_freq=min_freq, max_len=max_len)
    assert vocab.itos[:4] == list(SPECIALS) and len(set(vocab.itos)) == len(vocab)
    assert Vocabulary.from_dict(vocab.to_dict()).itos == vocab.itos
    for c in captions:
        ids = vocab.encode(c)
        assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
        assert len(ids) <= max_len + 2 and all(0 <= i < len(vocab) for i in ids)
        words = tokenize(c)[:max_len]
        expected = [w if w in vocab.stoi else "<unk>" for w in words]
        assert vocab.decode(ids).split() == expected


@given(lines)
def test_word_tokenizer(text):
    words = tokenize(text)
    assert all(w and w == w.lower() and " " not in w for w in words)
    assert tokenize(" ".join(words)) == words  # idempotent on its own output


@given(lines)
@example("A man.\u2028Two dogs")
@example("it's 3:30 -- go!!")
def test_ptb_tokenizer(text):
    out = ptb_tokenize(text)
    assert isinstance(out, str) and "\n" not in out
    assert not any(tok in PUNCTUATIONS for tok in out.split(" ") if tok)


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    out = []
    for fmt, kw in (("JPEG", {}), ("PNG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}),
                    ("TIFF", {}), ("JPEG", {"progressive": True})):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i: i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[i:i] = data[i: i + draw(st.integers(1, 32))]
    return bytes(data)


@pytest.mark.timeout(600)
@given(st.one_of(mutated_images(), st.binary(max_size=256)))
def test_image_loading_fuzz(data):
    try:
        im = load_image(data, max_pixels=4_000_000, name="fuzz.bin")
    except ImageLoadError as e:
        assert "fuzz.bin" in str(e) and e.reason
        return
    assert im.mode == "RGB" and im.width * im.height <= 4_000_000

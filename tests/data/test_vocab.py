from captionkit.data.vocab import SPECIALS, Vocabulary, tokenize

CAPTIONS = ["A dog runs.", "A black dog, running!", "Two dogs play in the snow", "a cat"]


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Dog's ball, on the GRASS!") == ["a", "dog's", "ball", "on", "the", "grass"]
    assert tokenize("   ...  ") == []


def test_specials_come_first_and_ids_are_deterministic():
    v1, v2 = Vocabulary.build(CAPTIONS), Vocabulary.build(list(reversed(CAPTIONS)))
    assert tuple(v1.itos[:4]) == SPECIALS
    assert v1.itos == v2.itos
    assert v1.itos[4] == "a"  # the most frequent word


def test_encode_decode_round_trip():
    v = Vocabulary.build(CAPTIONS)
    for c in CAPTIONS:
        ids = v.encode(c)
        assert ids[0] == v.start_id and ids[-1] == v.end_id
        assert v.decode(ids) == " ".join(tokenize(c))


def test_min_freq_and_unknown_words():
    v = Vocabulary.build(CAPTIONS, min_freq=2)
    assert "dog" in v.stoi and "snow" not in v.stoi
    assert v.encode("snow", add_special=False) == [v.unk_id]
    assert v.known_fraction("snow cat") == 0.0 and v.known_fraction("a snow") == 0.5


def test_max_len_truncates():
    v = Vocabulary.build(CAPTIONS, max_len=3)
    assert len(v.encode("a black dog running fast")) == 3 + 2


def test_decode_stops_at_end_and_skips_pad():
    v = Vocabulary.build(CAPTIONS)
    ids = [v.start_id, v.stoi["a"], v.pad_id, v.stoi["dog"], v.end_id, v.stoi["cat"]]
    assert v.decode(ids) == "a dog"


def test_save_load_round_trip(tmp_path):
    v = Vocabulary.build(CAPTIONS, max_len=7)
    v.save(tmp_path / "vocab.json")
    w = Vocabulary.load(tmp_path / "vocab.json")
    assert w.itos == v.itos and w.max_len == 7

"""Tokenizer and vocabulary: lower-cased words without punctuation, four special tokens."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-case and split into words, dropping punctuation: "A dog's ball!" -> [a, dog's, ball]."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Word <-> id mapping. Ids 0..3 are ``<pad> <start> <end> <unk>``."""

    def __init__(self, words: Iterable[str], max_len: int = 20) -> None:
        self.itos: list[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")
        self.max_len = max_len

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3
    banned = (0, 1, 3)  # never generated: <pad>, <start>, <unk>

    @classmethod
    def build(cls, captions: Iterable[str], min_freq: int = 1, max_len: int = 20) -> Vocabulary:
        """Count words over captions; keep those seen at least ``min_freq`` times (sorted by
        frequency, then alphabetically, so the same captions always give the same ids)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        return cls(words, max_len=max_len)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Text -> ids, truncated to ``max_len`` words, wrapped in <start> ... <end>."""
        ids = [self.stoi.get(w, self.unk_id) for w in tokenize(text)[: self.max_len]]
        return [self.start_id, *ids, self.end_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, stopping at <end> and skipping <start>/<pad>."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return " ".join(words)

    def known_fraction(self, text: str) -> float:
        """Share of a caption's words that are in the vocabulary (0.0 for an empty caption)."""
        words = tokenize(text)
        return sum(w in self.stoi for w in words) / len(words) if words else 0.0

    def to_dict(self) -> dict:
        return {"itos": self.itos, "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        itos = d["itos"]
        if tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        return cls(itos[len(SPECIALS) :], max_len=int(d["max_len"]))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_dict(json.loads(Path(path).read_text()))

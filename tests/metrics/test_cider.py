"""Corpus-fixed CIDEr-D (the SCST reward) equals pycocoevalcap's Cider per image."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from captionkit.metrics.cider import CiderD, ngram_counts

WORDS = ["a", "the", "dog", "cat", "man", "woman", "runs", "sits", "on", "in", "grass", "water", "red", "blue", "ball", "two"]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


def test_equals_pycocoevalcap_on_the_same_reference_set():
    rng = random.Random(0)
    refs = {str(i): [_sentence(rng) for _ in range(5)] for i in range(40)}
    hyps = {k: _sentence(rng) for k in refs}
    mean, per_image = Cider().compute_score(refs, {k: [v] for k, v in hyps.items()})
    ours = CiderD(refs).scores(list(refs), [hyps[k] for k in refs])
    assert ours == pytest.approx(per_image, abs=1e-9)
    assert ours.mean() == pytest.approx(mean, abs=1e-9)


def test_document_frequencies_come_from_the_corpus_not_the_batch():
    rng = random.Random(1)
    refs = {str(i): [_sentence(rng) for _ in range(5)] for i in range(30)}
    scorer = CiderD(refs)
    one = scorer.score("3", "a dog runs on the grass")
    assert one == scorer.scores(["3"], ["a dog runs on the grass"])[0]  # no batch effect
    assert scorer.score("3", refs["3"][0]) > one or one > 0


def test_ngram_counts():
    c = ngram_counts("a b a", 2)
    assert c[("a",)] == 2 and c[("a", "b")] == 1 and c[("b", "a")] == 1 and len(c) == 4
    assert np.isclose(CiderD({"x": ["a b"]}).score("x", ""), 0.0)

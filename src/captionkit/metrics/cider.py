"""CIDEr-D with document frequencies fixed from a reference corpus: the SCST reward.

pycocoevalcap's ``Cider`` recomputes document frequencies from whatever set it is asked to score,
so scoring a mini-batch of sampled captions with it would weight n-grams by that batch alone.
Self-critical training (Rennie et al., 2017) instead fixes them from all training references.
This class does that and precomputes every reference's tf-idf vector once; the arithmetic is
pycocoevalcap's (n-grams 1..4, Gaussian length penalty with sigma 6, clipped hypothesis weights,
x10; "length" counts the caption's bigrams, as there), and with the same reference set it gives
pycocoevalcap's per-image scores exactly (a test checks).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]


def ngram_counts(sentence: str, n: int = 4) -> Counter:
    """Counts of every 1..n-gram of a tokenized (space-separated) sentence."""
    words = sentence.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1)
                   for i in range(len(words) - k + 1))


class CiderD:
    """Per-caption CIDEr-D against fixed references; ``references`` are tokenized strings."""

    def __init__(self, references: dict[str, list[str]], n: int = 4, sigma: float = 6.0) -> None:
        self.n, self.sigma = n, sigma
        cooked = {k: [ngram_counts(r, n) for r in refs] for k, refs in references.items()}
        self.df: Counter = Counter()
        for refs in cooked.values():
            self.df.update({g for r in refs for g in r})
        self.ref_len = math.log(float(len(cooked)))
        self.refs = {k: [self._vector(r) for r in refs] for k, refs in cooked.items()}

    def _vector(self, counts: Counter) -> Vector:
        vec: list[dict] = [defaultdict(float) for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (self.ref_len - math.log(max(1.0, self.df[gram])))
            vec[k][gram] = w
            norm[k] += w * w
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _sim(self, hyp: Vector, ref: Vector) -> np.ndarray:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        penalty = math.exp(-((lh - lr) ** 2) / (2 * self.sigma**2))
        val = np.zeros(self.n)
        for k in range(self.n):
            val[k] = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0)
                         for g, w in vh[k].items())
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= penalty
        return val

    def score(self, image_id: str, hypothesis: str) -> float:
        """CIDEr-D of one tokenized caption against ``image_id``'s references."""
        hyp = self._vector(ngram_counts(hypothesis, self.n))
        refs = self.refs[image_id]
        total = sum(self._sim(hyp, r) for r in refs)
        return float(np.mean(total) / len(refs) * 10.0)

    def scores(self, image_ids: list[str], hypotheses: list[str]) -> np.ndarray:
        """CIDEr-D of each caption against its image's references, (len(hypotheses),)."""
        return np.array([self.score(i, h) for i, h in zip(image_ids, hypotheses, strict=True)])

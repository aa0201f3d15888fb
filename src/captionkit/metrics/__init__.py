"""Caption metrics through pycocoevalcap's official scorer code."""

from __future__ import annotations

import contextlib
import io

from pycocoevalcap.bleu.bleu import Bleu

from captionkit.vocab import tokenize


def corpus_bleu(references: dict[str, list[str]], hypotheses: dict[str, str]) -> dict[str, float]:
    """Corpus BLEU-1..4 (pycocoevalcap's scorer) over lower-cased, punctuation-free words.

    ``references`` maps an image id to its reference captions; ``hypotheses`` maps the same ids to
    one generated caption each.
    """
    if set(references) != set(hypotheses):
        raise ValueError("references and hypotheses must cover the same image ids")
    if not hypotheses:
        raise ValueError("nothing to score")
    gts = {k: [" ".join(tokenize(c)) for c in v] for k, v in references.items()}
    res = {k: [" ".join(tokenize(v))] for k, v in hypotheses.items()}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorer prints its internals
        scores, _ = Bleu(4).compute_score(gts, res)
    return {f"BLEU-{i + 1}": float(s) for i, s in enumerate(scores)}

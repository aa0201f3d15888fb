"""Caption metrics through pycocoevalcap's official scorer code.

:func:`captionkit.metrics.coco.score_captions` is the full COCO suite; :func:`corpus_bleu` and
:func:`corpus_bleu_cider` are the quick subsets used to pick checkpoints during training.
"""

from __future__ import annotations

from captionkit.metrics.coco import CaptionScores, score_captions


def corpus_bleu(references: dict[str, list[str]], hypotheses: dict[str, str]) -> dict[str, float]:
    """Corpus BLEU-1..4 (pycocoevalcap's scorer on PTB-tokenized text).

    ``references`` maps an image id to its reference captions; ``hypotheses`` maps the same ids to
    one generated caption each.
    """
    return score_captions(references, hypotheses, ("BLEU",), allow_empty=True).scores


def corpus_bleu_cider(references: dict[str, list[str]],
                      hypotheses: dict[str, str]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D: the fast (Java-free) metrics, for validation during training."""
    return score_captions(references, hypotheses, ("BLEU", "CIDEr-D"), allow_empty=True).scores


__all__ = ["CaptionScores", "corpus_bleu", "corpus_bleu_cider", "score_captions"]

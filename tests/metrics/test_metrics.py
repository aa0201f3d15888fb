import pytest
from pycocoevalcap.bleu.bleu import Bleu

from captionkit.errors import CaptionKitError
from captionkit.metrics import corpus_bleu, corpus_bleu_cider


def test_bleu_equals_pycocoevalcap_on_tokenised_text():
    refs = {"1": ["a dog runs on grass", "the dog is running"], "2": ["two cats sleep", "cats"]}
    hyps = {"1": "A dog runs on the grass.", "2": "two cats are sleeping"}
    ours = corpus_bleu(refs, hyps)
    gts = {"1": ["a dog runs on grass", "the dog is running"], "2": ["two cats sleep", "cats"]}
    res = {"1": ["a dog runs on the grass"], "2": ["two cats are sleeping"]}
    ref, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [ours[f"BLEU-{i}"] for i in range(1, 5)] == pytest.approx(ref, abs=1e-12)


def test_perfect_match_scores_one():
    refs = {"a": ["a small red circle above a large blue square"]}
    assert corpus_bleu(refs, {"a": refs["a"][0]})["BLEU-4"] == pytest.approx(1.0)


def test_mismatched_ids_raise():
    with pytest.raises(CaptionKitError, match="not in the reference set"):
        corpus_bleu({"a": ["x"]}, {"b": "x"})


def test_bleu_cider_subset():
    refs = {"1": ["a dog runs on grass", "the dog is running"], "2": ["two cats sleep", "cats"]}
    out = corpus_bleu_cider(refs, {"1": "a dog runs", "2": ""})  # a model may say nothing
    assert set(out) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"}

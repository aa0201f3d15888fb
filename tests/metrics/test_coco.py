"""COCO metrics: equal to pycocoevalcap's own pipeline, refusing bad input, honest when a
scorer cannot run."""

from __future__ import annotations

import shutil

import pytest

from captionkit.errors import CaptionKitError
from captionkit.metrics import coco
from captionkit.metrics.coco import check_inputs, results_to_dict, score_captions

REFS = {
    "1": ["A dog runs across the grass.", "A brown dog is running on a lawn.",
          "The dog's running outside, isn't it?", "a dog plays in a field"],
    "2": ["Two children play soccer in the park.", "Kids kick a ball on the grass",
          "two young boys playing football", "Children are playing with a ball."],
    "3": ["A man in a red jacket climbs a rock wall.", "A climber scales a cliff face",
          "A person (wearing red) is rock-climbing.", "man climbing a mountain"],
    "4": ["A woman rides a bike down the street", "A cyclist on a city road",
          "Woman riding her bicycle.", "a lady on a bike in traffic"],
    "5": ["Three dogs are swimming in a lake", "dogs swim in the water",
          "Some dogs paddle through the lake ...", "three dogs in water"],
}
HYPS = {"1": "a dog is running on the grass", "2": "two children are playing soccer",
        "3": "a man is climbing a rock", "4": "a woman rides a bicycle on the street",
        "5": "two dogs are swimming in the water"}


def _official(refs, hyps, scorers):
    """pycocoevalcap's own pipeline: the Java PTB tokenizer, then its scorers."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": hyps[k]}] for k in refs})
    return {name: s.compute_score(gts, res)[0] for name, s in scorers.items()}


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")


@needs_java
def test_scores_equal_pycocoevalcap_pipeline():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    ref = _official(REFS, HYPS, {"BLEU": Bleu(4), "METEOR": Meteor(), "ROUGE-L": Rouge(),
                                 "CIDEr-D": Cider()})
    ours = score_captions(REFS, HYPS, ("BLEU", "METEOR", "ROUGE-L", "CIDEr-D"))
    assert not ours.unavailable
    for i in range(4):
        assert ours.scores[f"BLEU-{i + 1}"] == pytest.approx(ref["BLEU"][i], abs=1e-9)
    for name in ("METEOR", "ROUGE-L", "CIDEr-D"):
        assert ours.scores[name] == pytest.approx(ref[name], abs=1e-9)
    java = score_captions(REFS, HYPS, ("BLEU", "CIDEr-D"), tokenizer="java")
    assert java.scores == pytest.approx({k: ours.scores[k] for k in java.scores}, abs=1e-12)


def test_python_path_scores_without_java(monkeypatch):
    monkeypatch.setattr(coco.shutil, "which", lambda name: None)
    out = score_captions(REFS, HYPS)
    assert {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"} <= set(out.scores)
    assert "Java" in out.unavailable["METEOR"] and "METEOR" not in out.scores
    assert "Java" in out.unavailable["SPICE"] and "SPICE" not in out.scores
    assert 0 < out.scores["CIDEr-D"] < 10 and out.images == 5


def test_spice_is_unavailable_with_a_reason_never_zero():
    out = score_captions(REFS, HYPS, ("SPICE",))
    if coco.spice_missing():
        assert out.unavailable["SPICE"] and "SPICE" not in out.scores
    else:
        assert out.scores["SPICE"] > 0


@needs_java
def test_meteor_timeout_is_reported_not_hung():
    out = score_captions(REFS, HYPS, ("METEOR",), timeout=0.01)
    assert "timed out" in out.unavailable["METEOR"] and "METEOR" not in out.scores


def test_perfect_captions_score_high():
    hyps = {k: v[0] for k, v in REFS.items()}
    out = score_captions(REFS, hyps, ("BLEU", "CIDEr-D"))
    assert out.scores["BLEU-1"] > 0.95 and out.scores["CIDEr-D"] > 2


@pytest.mark.parametrize("hyps,match", [
    ({**HYPS, "9": "a cat"}, "not in the reference set: 9"),
    ({k: v for k, v in HYPS.items() if k != "2"}, "no generated caption: 2"),
    ({**HYPS, "3": "  ...  "}, "empty"),
    ({}, "no generated captions"),
])
def test_bad_results_refused_before_scoring(hyps, match):
    with pytest.raises(CaptionKitError, match=match):
        check_inputs(REFS, hyps)


def test_references_without_words_refused():
    with pytest.raises(CaptionKitError, match="no non-empty reference"):
        check_inputs({"1": ["", "!"]}, {"1": "a dog"})


def test_results_json_duplicates_and_shape():
    assert results_to_dict([{"image_id": 1, "caption": "a"}, {"image_id": "2", "caption": "b"}]) \
        == {"1": "a", "2": "b"}
    with pytest.raises(CaptionKitError, match="more than once"):
        results_to_dict([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}])
    with pytest.raises(CaptionKitError, match="needs an 'image_id'"):
        results_to_dict([{"image_id": 1}])


def test_unknown_metric_refused():
    with pytest.raises(CaptionKitError, match="unknown metric"):
        score_captions(REFS, HYPS, ("BLEURT",))

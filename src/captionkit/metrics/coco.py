"""The COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) through pycocoevalcap.

The scorers are pycocoevalcap's own. What this module adds around them:

- tokenization without Java by default (:mod:`captionkit.metrics.ptb`, equal to the PTB
  tokenizer pycocoevalcap runs through Java; ``tokenizer="java"`` runs the original);
- input checks before any scoring (unknown ids, empty captions, duplicates);
- METEOR and SPICE run under a timeout; when Java, a jar or a model file is missing, or the
  scorer times out, the metric is reported *unavailable* with the reason, never as 0.

pycocoevalcap's ``Cider`` is CIDEr-D (clipped n-gram counts, Gaussian length penalty with
sigma 6, scaled by 10), so it is reported under that name.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from captionkit.errors import CaptionKitError
from captionkit.metrics import ptb

ALL_METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")


@dataclass
class CaptionScores:
    """Corpus scores by metric name, plus the metrics that could not run and why."""

    scores: dict[str, float]
    unavailable: dict[str, str] = field(default_factory=dict)
    images: int = 0

    def to_dict(self) -> dict:
        return {"images": self.images, "scores": self.scores, "unavailable": self.unavailable}


def results_to_dict(results: list[dict]) -> dict[str, str]:
    """COCO-format results ``[{"image_id": ..., "caption": ...}]`` -> {image id: caption},
    refusing duplicate ids and entries without a caption string."""
    out: dict[str, str] = {}
    dupes = Counter(str(r.get("image_id")) for r in results)
    dupes = sorted(k for k, n in dupes.items() if n > 1)
    if dupes:
        raise CaptionKitError(f"{len(dupes)} image id(s) appear more than once in the results: "
                              + ", ".join(dupes[:5]))
    for i, r in enumerate(results):
        if "image_id" not in r or not isinstance(r.get("caption"), str):
            raise CaptionKitError(f"result {i} needs an 'image_id' and a 'caption' string: {r}")
        out[str(r["image_id"])] = r["caption"]
    return out


def check_inputs(references: dict[str, list[str]], hypotheses: dict[str, str],
                 allow_empty: bool = False) -> None:
    """Refuse anything that would make the scores meaningless, before any scoring.
    ``allow_empty`` accepts empty generated captions (a model's own output may be empty; it
    then scores 0 on that image), never empty references."""
    if not hypotheses:
        raise CaptionKitError("no generated captions to score")
    unknown = sorted(set(hypotheses) - set(references))
    if unknown:
        raise CaptionKitError(f"{len(unknown)} result(s) for images not in the reference set: "
                              + ", ".join(unknown[:5]))
    missing = sorted(set(references) - set(hypotheses))
    if missing:
        raise CaptionKitError(f"{len(missing)} reference image(s) have no generated caption: "
                              + ", ".join(missing[:5]))
    empty = sorted(k for k, v in hypotheses.items() if not ptb.tokenize(v))
    if empty and not allow_empty:
        raise CaptionKitError(f"{len(empty)} generated caption(s) are empty (no words): "
                              + ", ".join(empty[:5]))
    no_refs = sorted(k for k, v in references.items() if not any(ptb.tokenize(c) for c in v))
    if no_refs:
        raise CaptionKitError(f"{len(no_refs)} image(s) have no non-empty reference caption: "
                              + ", ".join(no_refs[:5]))


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their internals
        return fn(*args)


def _with_timeout(fn, timeout: float, on_timeout=None):
    """Run ``fn()`` in a daemon thread; raise TimeoutError (after ``on_timeout()``) if it
    has not finished within ``timeout`` seconds."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        if on_timeout is not None:
            on_timeout()
        raise TimeoutError(f"timed out after {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _java_missing() -> str | None:
    return None if shutil.which("java") else "Java is not installed (no `java` on PATH)"


def meteor(gts: dict[str, list[str]], res: dict[str, list[str]], timeout: float) -> float:
    """METEOR 1.5 through pycocoevalcap's Java wrapper, killed after ``timeout`` seconds."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()

    def kill() -> None:
        scorer.meteor_p.kill()
        with contextlib.suppress(OSError):
            scorer.meteor_p.stdin.close()  # now, so the wrapper's __del__ has nothing to flush
        scorer.lock = threading.Lock()  # the stuck thread holds the old one; let __del__ run

    return float(_with_timeout(lambda: scorer.compute_score(gts, res)[0], timeout, kill))


def spice_missing() -> str | None:
    """Why SPICE cannot run here, or None. It needs Java and Stanford CoreNLP 3.6.0, which
    pycocoevalcap downloads on first use (so offline it must already be in place)."""
    if reason := _java_missing():
        return reason
    import pycocoevalcap.spice as spice_pkg

    lib = Path(spice_pkg.__file__).parent / "lib"
    need = ["stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"]
    absent = [n for n in need if not (lib / n).is_file()]
    if absent:
        return (f"Stanford CoreNLP is missing ({', '.join(absent)} in {lib}); run "
                "`python -c 'from pycocoevalcap.spice.spice import Spice; Spice()'` once "
                "online to fetch it")
    return None


def _spice(gts, res, timeout: float) -> float:
    from pycocoevalcap.spice.spice import Spice

    return float(_with_timeout(lambda: Spice().compute_score(gts, res)[0], timeout))


def _run_java_metric(out: CaptionScores, name: str, missing: str | None, run) -> None:
    """Score with an external Java scorer, or record why it could not run (never a 0)."""
    if missing:
        out.unavailable[name] = missing
        return
    try:
        out.scores[name] = run()
    except Exception as e:  # noqa: BLE001 - an external Java tool; say why it failed
        out.unavailable[name] = f"{name} failed: {e}"


def score_captions(references: dict[str, list[str]], hypotheses: dict[str, str],
                   metrics: tuple[str, ...] = ALL_METRICS, tokenizer: str = "python",
                   timeout: float = 600.0, allow_empty: bool = False) -> CaptionScores:
    """Score one generated caption per image against its references, COCO-style.

    ``references``: image id -> reference captions (raw text); ``hypotheses``: image id ->
    generated caption. Both are PTB-tokenized (``tokenizer``: ``python`` or ``java``) as
    pycocoevalcap's pipeline does, then scored with pycocoevalcap's scorers.
    """
    check_inputs(references, hypotheses, allow_empty)
    bad = set(metrics) - set(ALL_METRICS)
    if bad:
        raise CaptionKitError(f"unknown metric(s) {sorted(bad)}; choose from {ALL_METRICS}")
    tok = {"python": ptb.tokenize_all, "java": ptb.java_tokenize_all}[tokenizer]
    ids = sorted(hypotheses)
    gts = tok({k: list(references[k]) for k in ids})
    res = tok({k: [hypotheses[k]] for k in ids})
    out = CaptionScores({}, {}, len(ids))
    if "BLEU" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = _quiet(Bleu(4).compute_score, gts, res)
        out.scores.update({f"BLEU-{i + 1}": float(s) for i, s in enumerate(bleu)})
    if "METEOR" in metrics:
        _run_java_metric(out, "METEOR", _java_missing(), lambda: meteor(gts, res, timeout))
    if "ROUGE-L" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        out.scores["ROUGE-L"] = float(_quiet(Rouge().compute_score, gts, res)[0])
    if "CIDEr-D" in metrics:
        from pycocoevalcap.cider.cider import Cider

        out.scores["CIDEr-D"] = float(_quiet(Cider().compute_score, gts, res)[0])
    if "SPICE" in metrics:
        _run_java_metric(out, "SPICE", spice_missing(), lambda: _spice(gts, res, timeout))
    return out

"""The main job on the embedded default: generate ``shapes``, train, score, draw attention."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from captionkit.config import Config
from captionkit.data import by_split, load_records
from captionkit.data.shapes import attention_hit_rate
from captionkit.infer.captioner import BaseCaptioner, Captioner
from captionkit.infer.viz import attention_figure
from captionkit.metrics import corpus_bleu
from captionkit.train.fit import fit


def score_shapes(captioner: BaseCaptioner, records, batch_size: int = 64) -> tuple[dict, list]:
    """BLEU and the attention hit rate of a captioner's greedy captions on shapes records.

    ``attention_hit_rate`` counts every colour/shape word; ``attention_hit_rate_looked`` weighs
    each by how much it looked at the image (1 - beta for a visual sentinel, see
    :func:`attention_hit_rate`), and ``visual_weight`` is that weight's mean over the words
    (1.0 for mechanisms without a sentinel)."""
    refs, hyps, results = {}, {}, []
    counts = [0, 0, 0.0, 0.0]  # hits, words, weighted hits, weights
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        for rec, res in zip(chunk, captioner.caption_batch([r.image for r in chunk], 1), strict=True):
            refs[rec.image_id], hyps[rec.image_id] = list(rec.captions), res.text
            flat = res.attention.reshape(len(res.words), -1)  # (T, N)
            objects = rec.meta["objects"]
            strict = attention_hit_rate(res.text, flat, captioner.grid, objects)
            looked = attention_hit_rate(res.text, flat, captioner.grid, objects, weighted=True)
            counts = [c + x for c, x in zip(counts, (*strict, *looked), strict=True)]
            results.append((rec, res))
    hits, total, w_hits, weights = counts
    metrics = corpus_bleu(refs, hyps)
    metrics["attention_hit_rate"] = hits / total if total else 0.0
    metrics["attention_hit_rate_looked"] = w_hits / weights if weights else 0.0
    metrics["visual_weight"] = weights / total if total else 0.0
    metrics["attention_words"] = total
    return metrics, results


def run_demo(cfg: Config | None = None, out_dir: str | Path = "runs/demo",
             progress: bool = True, figures: int = 4) -> dict:
    """Train the shapes preset, then report held-out (test split) BLEU and attention hit rate."""
    cfg = cfg or Config()
    cfg = replace(cfg, train=replace(cfg.train, out_dir=str(out_dir)))
    out = Path(out_dir)
    result = fit(cfg, progress=progress, overwrite=True)  # the demo replaces its own run
    captioner = Captioner.from_checkpoint(result.best_checkpoint, precision="fp32")
    test = by_split(load_records(cfg.data), "test")
    metrics, results = score_shapes(captioner, test)
    metrics["train_seconds"] = round(result.seconds, 1)
    print(f"\nheld-out test split: {len(test)} images, trained in {result.seconds:.0f}s")
    print(f"  BLEU-4              {metrics['BLEU-4']:.3f}")
    print(f"  attention hit rate  {metrics['attention_hit_rate']:.3f} "
          f"({metrics['attention_words']} colour/shape words)")
    if metrics["visual_weight"] < 0.99:  # a visual sentinel: some words did not look
        print(f"  ... weighted by 1-beta {metrics['attention_hit_rate_looked']:.3f} "
              f"(mean visual weight {metrics['visual_weight']:.3f})")
    for rec, res in results[:5]:
        print(f"\n  generated: {res.text}\n  reference: {rec.captions[0]}")
    for j, (rec, res) in enumerate(results[:figures]):
        attention_figure(res.image, res.words, res.attention, out / f"attention_{j}.png",
                         name=rec.image_id)
    (out / "demo_metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\nattention maps and metrics written to {out}/")
    return metrics

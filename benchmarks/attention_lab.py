"""Attention lab: attention mechanisms x decoders at the same budget, on shapes and Flickr8k.

    # every mechanism with lstm (+ updown:additive, updown:adaptive), both benches
    python benchmarks/attention_lab.py --data-dir ../shared/flickr8k
    # one row at a time (one training at a time fits a small machine), then the report
    python benchmarks/attention_lab.py --bench flickr8k --data-dir ../shared/flickr8k \
        --rows lstm:adaptive
    python benchmarks/attention_lab.py --report-only
    # a smoke run in seconds
    OMP_NUM_THREADS=1 python benchmarks/attention_lab.py --bench shapes \
        --rows lstm:additive,lstm:general --shapes-epochs 1 --set train.max_steps=3 \
        --set data.num_train=64 --set data.num_dev=16 --set data.num_test=16 \
        --shapes-root /tmp/lab_shapes --out /tmp/lab --doc /tmp/lab/attention_lab.md

A row is ``decoder:attention`` (``decoder.name``/``decoder.attention``); every row of a bench
trains with the same preset, data, seed and epochs. ``shapes``: the built-in preset (what
``captionkit demo`` trains), scored on its held-out test split with greedy captions (BLEU-4,
attention hit rate; :func:`captionkit.demo.score_shapes`). ``flickr8k``: the preset
``configs/flickr8k_lite0_lstm.yaml`` from the feature cache (extracted first when missing), the
best dev checkpoint scored by :func:`evaluate_checkpoint` with beam 3 (BLEU-4, METEOR, ROUGE-L,
CIDEr-D), and for mechanisms with a visual sentinel the per-word visual weight 1 - beta
("Knowing when to look", Lu et al. 2017) over the dev captions.

Each finished (bench, row, budget) is kept in
``OUT/<bench>/<decoder>_<attention>_e<epochs>/lab_row.json``, in
the row's run folder (``best/``, ``last/``, ``metrics.jsonl``), and reused unless ``--rerun``;
an interrupted row is trained again from the start. The report always covers every row JSON
under ``OUT``, of both benches, whatever this call trained: one Markdown table on stdout, ``--doc`` (default ``docs/attention_lab.md``) with the table,
the attention-map figure ``<doc>.png`` (one row per mechanism on one photo) and the beta
figure ``<doc>_beta.png``, all from the measured JSON. Ends with ``best_mechanism=``,
``best_cider_d=``, ``additive_cider_d=`` (Flickr8k dev, beam 3), then the lowest shapes hit
rate over the soft mechanisms (every one but ``hard``) of each decoder at each budget
(``shapes_min_soft_hit_rate_<decoder>_e<epochs>=`` and ``..._looked_...``, which weighs each
word by 1 - beta), and the headline ``shapes_budget_epochs=``, ``shapes_min_soft_hit_rate=``,
``shapes_min_soft_hit_rate_looked=``: the lstm decoder at the largest budget with every soft
mechanism measured; ``n/a`` when not measured.
``--rescore`` scores kept shapes rows' checkpoints again without training.

The report (table, doc, closing lines) is :mod:`lab_report`'s, the attention-map figures
:mod:`lab_figures`'. Measures: ``params`` are the decoder's (attention included; not the encoder). ``train s`` is
``fit``'s wall clock: data, vocabulary, model, every epoch's training *and* its dev validation
(greedy captions of the dev split, BLEU/CIDEr-D) and checkpoint writes. ``train captions/s``
is training captions x epochs trained / train s, so it includes the validation too.
``beam-3 images/s`` times decoding alone: the split's grid features (cached, or encoded once
for shapes) in memory, beam 3, batches of 50, fp32, through the public captioning path
(``BaseCaptioner.caption_pixels``), after a one-batch warm-up, median of ``--repeats`` passes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

import captionkit.models  # noqa: F401  (registers every built-in decoder)
from captionkit.checkpoint import load_checkpoint
from captionkit.config import Config, load_config
from captionkit.data import by_split, load_records
from captionkit.data.features import extract_features
from captionkit.data.images import load_image
from captionkit.data.shapes import WHERE, word_outcomes
from captionkit.demo import score_shapes
from captionkit.errors import CaptionKitError
from captionkit.infer.captioner import BaseCaptioner, Captioner
from captionkit.infer.evaluation import DecodeSettings, evaluate_checkpoint, split_dataset
from captionkit.models.attention import ATTENTIONS
from captionkit.models.decoders import DECODERS, check_decoder_config
from captionkit.models.encoders import build_encoder
from captionkit.train.fit import fit
from lab_figures import draw_attention_figures
from lab_report import (
    BEAM,
    BENCHES,
    DECODE_BATCH,
    FLICKR_METRICS,
    ROOT,
    ROW_FILE,
    SHAPES_METRICS,
    UPDOWN_ROWS,
    key_values,
    load_rows,
    results_table,
    visual_weights,
    write_doc,
)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", help="comma list of decoder:attention (default: every mechanism "
                    "with lstm, plus updown:additive and updown:adaptive)")
    ap.add_argument("--bench", default="shapes,flickr8k",
                    help="shapes, flickr8k or both (flickr8k needs --data-dir to train)")
    ap.add_argument("--data-dir", help="Flickr8k folder (e.g. ../shared/flickr8k)")
    ap.add_argument("--config", default=str(ROOT / "configs/flickr8k_lite0_lstm.yaml"))
    ap.add_argument("--cache", default="runs/cache/flickr8k_lite0")
    ap.add_argument("--epochs", type=int, default=12, help="flickr8k epochs")
    ap.add_argument("--shapes-epochs", type=int, help="shapes epochs (default: the preset's)")
    ap.add_argument("--shapes-root", help="shapes data folder (default: the preset's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every row of every bench")
    ap.add_argument("--repeats", type=int, default=3, help="timed decoding passes (median)")
    ap.add_argument("--out", default="runs/attention_lab")
    ap.add_argument("--doc", default=str(ROOT / "docs/attention_lab.md"))
    ap.add_argument("--photo", help="figure photo (default: first jpg of ../shared/photos, "
                    "else a Flickr8k dev image)")
    ap.add_argument("--rerun", action="store_true", help="measure rows again even if kept")
    ap.add_argument("--rescore", action="store_true",
                    help="shapes: score kept rows' checkpoints again, without training")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: the report from the row JSON files under --out")
    args = ap.parse_args()
    args.benches = [b.strip() for b in args.bench.split(",") if b.strip()]
    unknown = sorted(set(args.benches) - set(BENCHES))
    if unknown:
        ap.error(f"unknown bench(es) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    return args


def resolve_rows(spec: str | None) -> list[tuple[str, str]]:
    """The (decoder, attention) rows to train; unknown names are skipped with a note."""
    decoders, attentions = DECODERS.names(), ATTENTIONS.names()
    if spec:
        wanted = [tuple(s.strip().split(":", 1)) if ":" in s else (s.strip(), "additive")
                  for s in spec.split(",") if s.strip()]
    else:
        wanted = [("lstm", a) for a in attentions] + [("updown", a) for a in UPDOWN_ROWS]
    rows = []
    for dec, att in wanted:
        if dec not in decoders or att not in attentions:
            missing = dec if dec not in decoders else att
            print(f"note: skipping {dec}:{att}: {missing!r} is not registered "
                  f"(decoders: {', '.join(decoders)}; attention: {', '.join(attentions)})")
        elif (dec, att) not in rows:
            rows.append((dec, att))
    return rows


def machine() -> dict:
    """CPU model, core count, torch version and threads of the machine measuring a row."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": gpu}


def row_config(args, bench: str, dec: str, att: str) -> tuple[Config, list, Path]:
    """The row's config (the bench's preset plus overrides; the row's decoder pair and run
    folder win), the overrides that define the measurement (run folder excluded) and the run
    folder, ``OUT/<bench>/<decoder>_<attention>_e<epochs>``: one per budget."""
    if bench == "shapes":
        preset, base = None, []
        base += [f"train.epochs={args.shapes_epochs}"] if args.shapes_epochs else []
        base += [f"data.root={args.shapes_root}"] if args.shapes_root else []
    else:
        preset = args.config
        base = [f"data.root={args.data_dir}", f"data.feature_cache={args.cache}",
                f"train.epochs={args.epochs}"]
    settings = [*base, *args.set, f"decoder.name={dec}", f"decoder.attention={att}"]
    cfg = load_config(preset, settings)
    check_decoder_config(cfg.decoder)  # an unsupported pair fails here, before any work
    run_dir = Path(args.out) / bench / f"{dec}_{att}_e{cfg.train.epochs}"
    return replace(cfg, train=replace(cfg.train, out_dir=str(run_dir))), settings, run_dir


class FeatureCaptioner(BaseCaptioner):
    """The captioning path of a trained model over grid features already computed (cached or
    encoded once): ``encode`` is the identity, so ``caption_pixels`` takes features (B, N, D)
    and decoding is timed without the encoder."""

    def __init__(self, model, cfg: Config, vocab, meta: dict) -> None:
        super().__init__(model.decoder, vocab, cfg, meta, model.encoder.preprocess,
                         model.encoder.grid)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x  # (B, N, D) features


def time_decoding(captioner: BaseCaptioner, batches: list, max_len: int,
                  repeats: int) -> tuple[float, list, list]:
    """Beam-3 images/s over ``batches`` of features (median of ``repeats`` passes after a
    one-batch warm-up), the last pass's results and every pass's seconds."""
    captioner.caption_pixels(batches[0][:2], BEAM, max_len)  # warm-up
    seconds, results = [], []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        results = [r for b in batches for r in captioner.caption_pixels(b, BEAM, max_len)]
        seconds.append(time.perf_counter() - t0)
    images = sum(len(b) for b in batches)
    return images / statistics.median(seconds), results, [round(s, 2) for s in seconds]



def beta_record(results: list, attention: str) -> dict | None:
    """Per generated word, the summed visual weight and its count over ``results``."""
    per_word: dict[str, list] = {}
    if not results:
        return None
    for res in results:
        weights = visual_weights(res, attention)
        if weights is None:
            return None
        for word, w in zip(res.words, weights, strict=False):
            entry = per_word.setdefault(word, [0.0, 0])
            entry[0], entry[1] = entry[0] + w, entry[1] + 1
    source = "CaptionResult.beta" if getattr(results[0], "beta", None) is not None \
        else "sum of the attention map"
    return {"source": source, "images": len(results), "per_word": per_word}


def training_record(cfg: Config, result, model, vocab, cache: str | None) -> dict:
    """Seconds, captions and epochs of a fit: the training split's captions as the dataset
    fit built holds them, epochs trained = steps / batches per epoch."""
    train_ds, _ = split_dataset(model, cfg, vocab, "train", cache, progress=False)
    captions = sum(len(c) for c in train_ds.captions)
    per_epoch = -(-len(train_ds) // cfg.train.batch_size)
    steps = result.history[-1]["step"] if result.history else 0
    epochs = steps / per_epoch
    best = max(result.history, key=lambda h: h[cfg.train.select_metric], default={})
    return {"train_seconds": round(result.seconds, 1), "train_captions": captions,
            "train_steps": steps, "epochs_run": len(result.history),
            "epochs_trained": round(epochs, 3), "best_epoch": best.get("epoch"),
            "train_captions_per_s": round(captions * epochs / result.seconds, 1),
            "params_decoder": sum(p.numel() for p in model.decoder.parameters())}


@torch.inference_mode()
def shapes_features(captioner: Captioner, records: list) -> list[torch.Tensor]:
    """The records' grid features, encoded once, in decoding batches (B, N, D)."""
    out = []
    for i in range(0, len(records), DECODE_BATCH):
        chunk = records[i : i + DECODE_BATCH]
        x = torch.stack([captioner.preprocess(load_image(r.image).convert("RGB")) for r in chunk])
        out.append(captioner.encode(x).float())
    return out


def shapes_metrics(metrics: dict) -> dict:
    """The row's shapes metrics: BLEU-4, the hit rate over every colour/shape word, and the
    hit rate with each word weighted by how much it looked (1 - beta; equal for mechanisms
    without a sentinel)."""
    return {k: round(metrics[k], 4) for k in SHAPES_METRICS}


def shapes_word_outcomes(results: list, grid: tuple[int, int]) -> dict:
    """Where the colour and shape words of ``score_shapes``' (record, result) pairs looked:
    per kind, the count of each outcome of :func:`word_outcomes` and the mean sum of the
    words' maps (1 - beta for a sentinel)."""
    table = {kind: {**dict.fromkeys(WHERE, 0), "mean_looked": 0.0}
             for kind in ("colour", "shape")}
    for rec, res in results:
        flat = res.attention.reshape(len(res.words), -1)  # (T, N)
        for kind, where, looked in word_outcomes(res.text, flat, grid, rec.meta["objects"]):
            table[kind][where] += 1
            table[kind]["mean_looked"] += looked
    for counts in table.values():
        n = sum(counts[w] for w in WHERE)
        counts["mean_looked"] = round(counts["mean_looked"] / n, 4) if n else 0.0
    return table


def rescore_shapes_row(path: Path) -> None:
    """Score a kept shapes row's checkpoint again (the shapes metrics only; its training and
    timing fields stay as measured)."""
    row = json.loads(path.read_text())
    captioner = Captioner.from_checkpoint(row["checkpoint"], precision="fp32")
    test = by_split(load_records(captioner.cfg.data), "test")
    metrics, results = score_shapes(captioner, test)
    row["metrics"] = shapes_metrics(metrics)
    row["word_outcomes"] = shapes_word_outcomes(results, captioner.grid)
    row["rescored"] = time.strftime("%Y-%m-%d %H:%M")
    path.write_text(json.dumps(row, indent=1))
    print(f"shapes {row['decoder']}:{row['attention']}: rescored {path}: {row['metrics']}")


def run_shapes_row(cfg: Config, args) -> dict:
    """fit + score_shapes (as ``captionkit demo``), then timed beam-3 decoding of the test
    split's features."""
    result = fit(cfg, progress=False, overwrite=True)
    captioner = Captioner.from_checkpoint(result.best_checkpoint, precision="fp32")
    test = by_split(load_records(cfg.data), "test")
    metrics, results = score_shapes(captioner, test)
    fc = FeatureCaptioner(captioner.model, captioner.cfg, captioner.vocab, captioner.meta)
    rate, _, seconds = time_decoding(fc, shapes_features(captioner, test),
                                     cfg.train.eval_max_len, args.repeats)
    return {"metrics": shapes_metrics(metrics),
            "word_outcomes": shapes_word_outcomes(results, captioner.grid),
            "attention_words": metrics["attention_words"], "unavailable": {},
            "split": "test", "images": len(test), "metric_decode": "greedy (beam 1)",
            **training_record(cfg, result, captioner.model, captioner.vocab, None),
            "beam3_images_per_s": round(rate, 1), "decode_seconds": seconds, "beta": None}


def ensure_cache(cfg: Config, cache: str) -> None:
    """Extract the Flickr8k features when the cache has no index (as flickr8k_quality.py)."""
    if (Path(cache) / "index.json").is_file():
        return
    t0 = time.perf_counter()
    encoder = build_encoder(replace(cfg.encoder, trainable=False))
    extract_features(load_records(cfg.data), encoder, cache, num_workers=2, progress=False)
    print(f"features extracted into {cache} in {time.perf_counter() - t0:.0f}s")


def run_flickr8k_row(cfg: Config, args, run_dir: Path) -> dict:
    """fit, evaluate_checkpoint (dev, beam 3), then timed beam-3 decoding of the cached dev
    features with the best checkpoint, whose captions also give the 1 - beta statistics."""
    ensure_cache(cfg, args.cache)
    result = fit(cfg, progress=False, overwrite=True)
    settings = DecodeSettings(beam=BEAM, max_len=cfg.train.eval_max_len,
                              batch_size=DECODE_BATCH, precision="fp32")
    rec = evaluate_checkpoint(result.best_checkpoint, split="dev", settings=settings,
                              feature_cache=args.cache, out=run_dir / "eval_dev_beam3",
                              progress=False)
    model, _, vocab, meta = load_checkpoint(result.best_checkpoint)
    dev, _ = split_dataset(model, cfg, vocab, "dev", args.cache, progress=False)
    feats = [torch.stack([dev[i][0] for i in range(s, min(s + DECODE_BATCH, len(dev)))])
             for s in range(0, len(dev), DECODE_BATCH)]  # (B, N, D) each
    rate, results, seconds = time_decoding(FeatureCaptioner(model, cfg, vocab, meta), feats,
                                           cfg.train.eval_max_len, args.repeats)
    metrics = {k: round(v, 4) for k, v in rec["scores"].items() if k in FLICKR_METRICS}
    return {"metrics": metrics, "unavailable": rec["unavailable"], "split": "dev",
            "images": rec["images"], "metric_decode": f"beam {BEAM}",
            "eval_seconds": rec["seconds"], "data_dir": cfg.data.root,
            **training_record(cfg, result, model, vocab, args.cache),
            "beam3_images_per_s": round(rate, 1), "decode_seconds": seconds,
            "beta": beta_record(results, cfg.decoder.attention)}


def run_row(args, bench: str, dec: str, att: str) -> None:
    """Measure one (bench, row) into its lab_row.json, or reuse the one kept there."""
    try:
        cfg, settings, run_dir = row_config(args, bench, dec, att)
    except CaptionKitError as e:
        print(f"note: skipping {bench} {dec}:{att}: {e}")
        return
    path = run_dir / ROW_FILE
    if path.is_file() and args.rescore and bench == "shapes":
        rescore_shapes_row(path)
        return
    if path.is_file() and not args.rerun:
        kept = json.loads(path.read_text()).get("settings")
        differs = "" if kept == settings else f" (measured with other settings: {kept})"
        print(f"{bench} {dec}:{att}: reused {path}{differs}")
        return
    print(f"\n== {bench} {dec}:{att} ==")
    t0 = time.strftime("%Y-%m-%d %H:%M")
    try:
        body = run_shapes_row(cfg, args) if bench == "shapes" else \
            run_flickr8k_row(cfg, args, run_dir)
    except CaptionKitError as e:
        print(f"note: {bench} {dec}:{att} failed, no row written: {e}")
        return
    record = {"bench": bench, "decoder": dec, "attention": att, "settings": settings,
              "epochs_config": cfg.train.epochs, "date": t0, "machine": machine(),
              "checkpoint": str(run_dir / "best"), **body}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    print(f"{bench} {dec}:{att}: written {path}")


def main() -> None:
    args = parse_args()
    if not args.report_only:
        rows = resolve_rows(args.rows)
        for bench in args.benches:
            if bench == "flickr8k" and not args.data_dir:
                print("note: flickr8k bench skipped: no --data-dir")
                continue
            for dec, att in rows:
                run_row(args, bench, dec, att)
    rows = load_rows(args.out)
    if not rows:
        print(f"no measured rows under {args.out}")
        print("\n".join(key_values(rows)))
        return
    table = results_table(rows)
    print(f"\n{table}\n")
    doc = Path(args.doc)
    figures = draw_attention_figures(args, rows, doc)
    write_doc(args, rows, table, figures, doc)
    print(f"written {doc} and {', '.join(str(f[0]) for f in figures) or 'no figure'}")
    print("\n".join(key_values(rows)))


if __name__ == "__main__":
    main()

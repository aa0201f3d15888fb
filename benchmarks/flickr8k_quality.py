"""Quality under a time budget: extract features, train, score greedy captions on Flickr8k dev.

    python benchmarks/flickr8k_quality.py --data-dir ../shared/flickr8k

Runs the whole recipe of a preset (default ``configs/flickr8k_lite0_lstm.yaml``) through the
public API: feature extraction into ``--cache`` (timed; an existing complete cache is reused and
says so), ``fit`` (dev BLEU/CIDEr-D each epoch, best checkpoint kept), then greedy decoding of
the dev split with the best checkpoint, scored with the COCO metrics (pycocoevalcap's scorers;
results and metrics JSON in ``<out>/eval_dev_beam1``). Ends with ``bleu4=``, ``cider_d=``,
``extract_seconds=``, ``train_seconds=`` and ``total_minutes=`` lines.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from captionkit.config import load_config
from captionkit.data import load_records
from captionkit.data.features import extract_features
from captionkit.infer.evaluation import DecodeSettings, evaluate_checkpoint
from captionkit.models.encoders import build_encoder
from captionkit.train.fit import fit

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs/flickr8k_lite0_lstm.yaml"))
    ap.add_argument("--cache", default="runs/cache/flickr8k_lite0")
    ap.add_argument("--out", default="runs/bench_flickr8k_quality")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(args.config, [f"data.root={args.data_dir}", f"data.feature_cache="
                                    f"{args.cache}", f"train.out_dir={args.out}", *args.set])
    t0 = time.perf_counter()
    records = load_records(cfg.data)
    encoder = build_encoder(replace(cfg.encoder, trainable=False))
    reused = (Path(args.cache) / "index.json").is_file()
    extract_features(records, encoder, args.cache, num_workers=2, progress=False)
    extract_s = time.perf_counter() - t0
    print(f"features: {'reused existing cache' if reused else 'extracted'} in {extract_s:.0f}s")
    result = fit(cfg, progress=False, overwrite=True)
    train_s = result.seconds
    rec = evaluate_checkpoint(result.best_checkpoint, split="dev",
                              settings=DecodeSettings(beam=1, max_len=cfg.train.eval_max_len),
                              feature_cache=args.cache, out=Path(args.out) / "eval_dev_beam1",
                              progress=False)
    total = time.perf_counter() - t0
    print(f"\nFlickr8k dev ({rec['images']} images), greedy, best epoch "
          f"{rec['checkpoint_epoch']} of {cfg.train.epochs}, {Path(args.config).name}")
    print(f"{'metric':<10}{'value':>8}")
    for k, v in rec["scores"].items():
        print(f"{k:<10}{v:>8.4f}")
    for k, why in rec["unavailable"].items():
        print(f"{k:<10}     n/a  ({why})")
    print(f"bleu4={rec['scores']['BLEU-4']:.4f}")
    print(f"cider_d={rec['scores']['CIDEr-D']:.4f}")
    print(f"extract_seconds={extract_s:.0f}" + (" (reused cache)" if reused else ""))
    print(f"train_seconds={train_s:.0f}")
    print(f"total_minutes={total / 60:.1f}")


if __name__ == "__main__":
    main()

"""Captioning speed: beam-3 throughput from cached features, and JPEG -> caption latency.

    python benchmarks/caption_speed.py --checkpoint runs/flickr8k_lite0_lstm/best \
        --cache runs/cache/flickr8k_lite0 --photos ../shared/photos

Throughput: batches of grid features (from ``--cache`` when given, random otherwise) through
the batched beam search, images/s, median of ``--repeats`` runs. Latency: one image at a time
through the public API (``captionkit.load(ckpt).caption(path)``: JPEG decode, preprocessing,
encoder, beam search), p50/p95 over every photo of ``--photos`` (synthetic 500x375 JPEGs when
omitted), after a warm-up. Without ``--checkpoint`` the Lite0 + 512-d LSTM preset is built with
an untrained decoder, which always writes ``max_len`` words: a worst case for decoding.
Ends with ``beam3_images_per_s=`` and ``latency_p50_ms=``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captionkit.config import load_config
from captionkit.data.features import FeatureStore
from captionkit.data.vocab import Vocabulary
from captionkit.infer.captioner import Captioner
from captionkit.infer.decoding import beam_search
from captionkit.models.captioner import build_model
from timing import median_rate

ROOT = Path(__file__).resolve().parents[1]


def untrained_captioner(config: str) -> Captioner:
    cfg = load_config(config)
    words = [f"w{i}" for i in range(2500)]
    vocab = Vocabulary.build([" ".join(words)] * cfg.data.min_freq, cfg.data.min_freq,
                             cfg.data.max_len)
    model = build_model(cfg, len(vocab)).eval()
    return Captioner(model, cfg, vocab, {"epoch": 0})


def feature_batches(captioner: Captioner, cache: str | None, images: int, batch: int):
    if cache:
        store = FeatureStore(cache, verify=False)
        ids = list(store.row)[:images]
        feats = torch.stack([store.get(i) for i in ids])  # (I, N, D)
    else:
        enc = captioner.model.encoder
        feats = torch.randn(images, enc.grid[0] * enc.grid[1], enc.out_dim)
    return list(feats.split(batch))


def throughput(captioner: Captioner, batches, beam: int, repeats: int) -> float:
    v = captioner.vocab
    n = sum(b.size(0) for b in batches)

    def run() -> None:
        for feats in batches:
            beam_search(captioner.decoder, feats.to(captioner.dtype), start_id=v.start_id,
                        end_id=v.end_id, beam_size=beam, max_len=v.max_len, banned=v.banned)
    return median_rate(run, n, repeats)


def latencies(captioner: Captioner, photos: list[Path], beam: int, rounds: int) -> np.ndarray:
    captioner.caption(photos[0], beam_size=beam)  # warm-up
    out = []
    for _ in range(rounds):
        for p in photos:
            t0 = time.perf_counter()
            captioner.caption(p, beam_size=beam)
            out.append(time.perf_counter() - t0)
    return np.array(out) * 1000.0


def synthetic_photos(folder: Path, n: int = 20) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), np.uint8)).save(paths[-1])
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="trained checkpoint (default: untrained preset model)")
    ap.add_argument("--config", default=str(ROOT / "configs/flickr8k_lite0_lstm.yaml"))
    ap.add_argument("--cache", help="feature cache for the throughput part")
    ap.add_argument("--photos", help="folder of JPEGs for the latency part")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="latency passes over the photos")
    args = ap.parse_args()
    cap = Captioner.from_checkpoint(args.checkpoint) if args.checkpoint else \
        untrained_captioner(args.config)
    tmp = tempfile.TemporaryDirectory()
    photos = (sorted(Path(args.photos).glob("*.jpg")) if args.photos
              else synthetic_photos(Path(tmp.name)))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; decoder {cap.dtype}; model: "
          f"{args.checkpoint or 'untrained preset'} "
          f"({cap.cfg.encoder.name} + {cap.cfg.decoder.name}); features: "
          f"{args.cache or 'random'}; photos: {args.photos or 'synthetic'} ({len(photos)})")
    batches = feature_batches(cap, args.cache, args.images, args.batch_size)
    rows = [(f"beam {k} from features, batch {args.batch_size}", "images/s",
             throughput(cap, batches, k, args.repeats)) for k in (1, 3)]
    lat = {k: latencies(cap, photos, k, args.rounds) for k in (1, 3)}
    for k, ms in lat.items():
        rows.append((f"JPEG -> caption, one image, beam {k}: p50", "ms", float(np.median(ms))))
        rows.append((f"JPEG -> caption, one image, beam {k}: p95", "ms",
                     float(np.percentile(ms, 95))))
    print(f"\n{'what':<48} {'value':>9}  unit")
    for what, unit, value in rows:
        print(f"{what:<48} {value:>9.1f}  {unit}")
    print(f"beam3_images_per_s={rows[1][2]:.1f}")
    print(f"latency_p50_ms={float(np.median(lat[3])):.1f}")


if __name__ == "__main__":
    main()

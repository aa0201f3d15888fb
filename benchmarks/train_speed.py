"""Training-speed benchmark: feature extraction images/s and decoder training captions/s.

    python benchmarks/train_speed.py --data-dir ../shared/flickr8k

Extraction is timed over real images when ``--data-dir`` is given (synthetic JPEGs otherwise):
the plain eager PyTorch loop as a baseline, then captionkit's extraction pipeline (parallel
decoding, channels-last, frozen TorchScript trace) for efficientnet_lite0 and densenet121
(random weights: the speed is the same), end to end and in steady state (start-up removed).
Decoder training is timed with the real caption lengths and vocabulary of the training split
(synthetic when no data is given) over random 512-d-preset-shaped features, through the same
``train_one_epoch`` that ``captionkit train`` runs. Each figure is the median of ``--repeats``
runs after a warm-up; the projected epoch is 30,000 captions (Flickr8k train) / captions/s.
It ends with ``extract_images_per_s=``, ``train_captions_per_s=`` and ``epoch_seconds=`` lines.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from captionkit.config import load_config
from captionkit.data import by_split, load_records
from captionkit.data.dataset import FeatureCaptionDataset, LengthBucketSampler, collate
from captionkit.data.features import extract_features
from captionkit.data.images import load_image
from captionkit.data.records import CaptionRecord
from captionkit.data.vocab import Vocabulary
from captionkit.models.captioner import build_model
from captionkit.models.encoders import build_encoder
from captionkit.train.distributed import resolve_device
from captionkit.train.fit import train_one_epoch
from captionkit.train.optim import build_optimizer
from timing import median_rate

FLICKR8K_TRAIN_CAPTIONS = 30_000
ROOT = Path(__file__).resolve().parents[1]


def synthetic_records(folder: Path, n: int) -> list[CaptionRecord]:
    """``n`` random 500x375 JPEGs (Flickr-sized) with 5 random captions of 8-16 words each."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(2000)]
    recs = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), np.uint8)).save(path)
        caps = tuple(" ".join(rng.choice(words, rng.integers(8, 17))) for _ in range(5))
        recs.append(CaptionRecord(image=str(path), captions=caps, split="train", image_id=str(i)))
    return recs


def plain_loop_rate(records: list[CaptionRecord], encoder, batch_size: int) -> float:
    """Baseline: decode in the main process, eager fp32 model, no layout or graph tricks."""
    encoder = encoder.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(records), batch_size):
            batch = [encoder.preprocess(load_image(r.image)) for r in records[s:s + batch_size]]
            encoder(torch.stack(batch))
    return len(records) / (time.perf_counter() - t0)


def extraction_rate(records, encoder, batch_size: int, workers: int,
                    repeats: int) -> tuple[float, float]:
    """captionkit's extraction pipeline into a fresh cache folder each run: (images/s end to
    end for all ``records``, steady-state images/s). Each run pays a fixed start-up (worker
    processes, tracing the encoder); timing a quarter and all of the images and dividing the
    difference in images by the difference in seconds cancels it."""
    def seconds(recs) -> float:
        def run() -> None:
            with tempfile.TemporaryDirectory() as d:
                extract_features(recs, encoder, d, batch_size=batch_size,
                                 num_workers=workers, progress=False)
        return len(recs) / median_rate(run, len(recs), repeats)
    small, full = seconds(records[: len(records) // 4]), seconds(records)
    steady = (len(records) - len(records) // 4) / max(full - small, 1e-9)
    return len(records) / full, steady


class MemoryStore:
    """Random features standing in for a feature cache (values do not change the speed)."""

    def __init__(self, ids: list[str], n: int, d: int, device: torch.device) -> None:
        feats = torch.randn(len(ids), n, d).half()  # (I, N, D) like the fp16 cache
        self.row = {iid: i for i, iid in enumerate(ids)}
        self.features = feats

    def get(self, image_id: str) -> torch.Tensor:
        return self.features[self.row[image_id]].float()  # (N, D)


def training_rate(cfg, records, vocab, batch_size: int, steps: int, repeats: int,
                  device: torch.device) -> tuple[float, float]:
    """(captions/s, peak MiB) of ``train_one_epoch`` over ``steps`` length-bucketed batches."""
    model = build_model(cfg, len(vocab), pretrained=False).to(device)
    enc = model.encoder
    store = MemoryStore([r.image_id for r in records], enc.grid[0] * enc.grid[1], enc.out_dim,
                        device)
    ds = FeatureCaptionDataset(records[: batch_size * steps], vocab, store)
    loader = DataLoader(ds, batch_sampler=LengthBucketSampler.for_dataset(ds, batch_size),
                        collate_fn=collate)
    captions = sum(len(c) for c in ds.captions)
    opt = build_optimizer(model, cfg.train)
    tcfg = replace(cfg.train, max_steps=None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def run() -> None:
        train_one_epoch(model, loader, opt, tcfg, device, 0, 10**9, vocab.pad_id, False)
        if device.type == "cuda":
            torch.cuda.synchronize()
    rate = median_rate(run, captions, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return rate, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="Flickr8k folder (synthetic data when omitted)")
    ap.add_argument("--config", default=str(ROOT / "configs/flickr8k_lite0_lstm.yaml"))
    ap.add_argument("--extract-images", type=int, default=512)
    ap.add_argument("--baseline-images", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=10, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    ap.add_argument("--batch-sizes", help="comma list (default: 64 on CPU; 64,256,1024 on GPU)")
    args = ap.parse_args()
    cfg = load_config(args.config, [f"data.root={args.data_dir}"] if args.data_dir else [])
    device = resolve_device(cfg.train.device)
    tmp = tempfile.TemporaryDirectory()
    if args.data_dir:
        train = by_split(load_records(cfg.data), "train")
    else:
        train = synthetic_records(Path(tmp.name), max(args.extract_images, 64))
    vocab = Vocabulary.build((c for r in train for c in r.captions), cfg.data.min_freq,
                             cfg.data.max_len)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {device}; "
          f"data: {'Flickr8k train' if args.data_dir else 'synthetic'}; "
          f"vocab {len(vocab)}; medians of {args.repeats} runs")
    rows = []
    sub = train[: args.extract_images]
    lite0 = build_encoder(replace(cfg.encoder, trainable=False))
    rows.append(("extract", "efficientnet_lite0 plain eager loop (baseline)", "images/s",
                 plain_loop_rate(sub[: args.baseline_images], lite0, 32)))
    extract = {}
    for name in ("efficientnet_lite0", "densenet121"):
        enc = lite0 if name == "efficientnet_lite0" else build_encoder(
            replace(cfg.encoder, name=name, pretrained=False, weights=None, trainable=False))
        n = len(sub) if name == "efficientnet_lite0" else len(sub) // 2
        end_to_end, extract[name] = extraction_rate(sub[:n], enc, 32, args.workers,
                                                    args.repeats)
        rows.append(("extract", f"{name} captionkit pipeline, {n} images incl. start-up",
                     "images/s", end_to_end))
        rows.append(("extract", f"{name} captionkit pipeline, steady state", "images/s",
                     extract[name]))
    sizes = ([int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes
             else [cfg.train.batch_size] + ([256, 1024] if device.type == "cuda" else []))
    train_rate = {}
    for bs in sizes:
        steps = max(1, min(args.train_steps, len(train) // bs))
        rate, peak = training_rate(cfg, train, vocab, bs, steps, args.repeats, device)
        train_rate[bs] = rate
        mem = "" if peak != peak else f", peak {peak:.0f} MiB"
        rows.append(("train", f"{cfg.decoder.name} {cfg.decoder.hidden_dim}-d, batch {bs} images "
                     f"(~{5 * bs} captions), amp={cfg.train.amp}{mem}", "captions/s", rate))
        rows.append(("train", f"  projected Flickr8k epoch ({FLICKR8K_TRAIN_CAPTIONS} captions)",
                     "s", FLICKR8K_TRAIN_CAPTIONS / rate))
    print(f"\n{'stage':<8} {'what':<72} {'value':>10}  unit")
    for stage, what, unit, value in rows:
        print(f"{stage:<8} {what:<72} {value:>10.1f}  {unit}")
    best = train_rate[cfg.train.batch_size] if cfg.train.batch_size in train_rate else max(
        train_rate.values())
    print(f"extract_images_per_s={extract['efficientnet_lite0']:.1f}")
    print(f"train_captions_per_s={best:.1f}")
    print(f"epoch_seconds={FLICKR8K_TRAIN_CAPTIONS / best:.1f}")


if __name__ == "__main__":
    main()

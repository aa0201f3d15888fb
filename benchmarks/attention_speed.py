"""Training speed of each attention lab row (decoder:attention), against one plain PyTorch
baseline timed in the same run.

    python benchmarks/attention_speed.py --data-dir ../shared/flickr8k
    python benchmarks/attention_speed.py --rows lstm:additive,updown:adaptive --train-steps 2

Every row trains the Flickr8k preset's sizes (``configs/flickr8k_lite0_lstm.yaml``) with its
``decoder.name``/``decoder.attention`` on the same length-bucketed batches of the training
split's real captions (synthetic captions without ``--data-dir``) over random preset-shaped
features, through ``train_one_epoch`` and the cross-entropy stage (what ``captionkit train``
runs), median of ``--repeats`` runs after a warm-up. No validation, no data loading from disk:
the training step alone, unlike the lab's ``train captions/s`` (which divides by ``fit``'s whole
wall clock). The baseline is :class:`train_speed.PlainSAT` (the tutorial-style SAT loop in plain
PyTorch) on the same batches. Writes ``OUT/speed.json`` (read by ``attention_lab.py``'s report)
and ends with ``plain_captions_per_s=`` and one ``<decoder>_<attention>_captions_per_s=`` line
per row, then ``additive_speedup_vs_plain=``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captionkit.config import load_config
from captionkit.data import by_split, load_records
from captionkit.data.dataset import FeatureCaptionDataset, LengthBucketSampler
from captionkit.data.vocab import Vocabulary
from captionkit.models.captioner import build_model
from captionkit.train import loop, stages
from captionkit.train.optim import build_optimizer
from lab_report import ROOT
from train_speed import MemoryStore, PlainSAT, plain_epoch, synthetic_records, timed


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="Flickr8k folder (synthetic captions when omitted)")
    ap.add_argument("--config", default=str(ROOT / "configs/flickr8k_lite0_lstm.yaml"))
    ap.add_argument("--rows", default="lstm:additive,lstm:general,lstm:scaled_dot,lstm:aoa,"
                    "lstm:adaptive,lstm:hard,updown:additive,updown:adaptive")
    ap.add_argument("--train-steps", type=int, default=6, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="runs/attention_lab")
    return ap.parse_args()


def loader_for(cfg, records, vocab, steps: int) -> tuple[DataLoader, int]:
    """Length-bucketed batches of ``steps`` x batch size images (random features of the
    preset's grid) and their caption count."""
    model = build_model(cfg, len(vocab), pretrained=False)
    n, d = model.encoder.grid[0] * model.encoder.grid[1], model.encoder.out_dim
    records = records[: cfg.train.batch_size * steps]
    ds = FeatureCaptionDataset(records, vocab, MemoryStore([r.image_id for r in records], n, d))
    loader = DataLoader(ds, batch_sampler=LengthBucketSampler.for_dataset(
        ds, cfg.train.batch_size), collate_fn=ds.collate)
    return loader, sum(len(c) for c in ds.captions)


def row_rate(cfg, vocab, loader: DataLoader, captions: int, repeats: int) -> tuple[float, int]:
    """(captions/s of captionkit's xe stage, decoder parameters) for one row's config."""
    torch.manual_seed(0)
    model = build_model(cfg, len(vocab), pretrained=False)
    tcfg = replace(cfg.train, max_steps=None)
    stage = stages.CrossEntropy(model, build_optimizer(model, tcfg), tcfg, torch.device("cpu"),
                                pad_id=vocab.pad_id)

    def run(ld: DataLoader) -> None:
        loop.train_one_epoch(stage, ld, tcfg, step=0, total_steps=10**9, progress=False)
    rate, _ = timed(run, loader, captions, repeats, torch.device("cpu"))
    return rate, sum(p.numel() for p in model.decoder.parameters())


def main() -> None:
    args = parse_args()
    base = load_config(args.config, [f"data.root={args.data_dir}"] if args.data_dir else [])
    if args.data_dir:
        train = by_split(load_records(base.data), "train")
    else:
        folder = Path(args.out) / "speed_synthetic"
        folder.mkdir(parents=True, exist_ok=True)
        train = synthetic_records(folder, base.train.batch_size * args.train_steps)
    vocab = Vocabulary.build((c for r in train for c in r.captions), base.data.min_freq,
                             base.data.max_len)
    loader, captions = loader_for(base, train, vocab, args.train_steps)
    dc = base.decoder
    plain = PlainSAT(len(vocab), loader.dataset.store.features.size(-1), dc.embed_dim,
                     dc.hidden_dim, dc.attention_dim, dc.dropout)
    plain_rate, _ = timed(plain_epoch(plain, base.train, torch.device("cpu"), vocab.pad_id),
                          loader, captions, args.repeats, torch.device("cpu"))
    rows = {}
    for spec in args.rows.split(","):
        dec, att = spec.strip().split(":")
        cfg = base.override([f"decoder.name={dec}", f"decoder.attention={att}"])
        rate, params = row_rate(cfg, vocab, loader, captions, args.repeats)
        rows[f"{dec}:{att}"] = {"captions_per_s": round(rate, 1), "params_decoder": params,
                                "vs_plain": round(rate / plain_rate, 2)}
    print(f"{'row':<18}{'captions/s':>12}{'x plain':>9}{'params':>10}")
    print(f"{'plain SAT loop':<18}{plain_rate:>12.1f}{1.0:>9.2f}{'-':>10}")
    for name, r in rows.items():
        print(f"{name:<18}{r['captions_per_s']:>12.1f}{r['vs_plain']:>9.2f}"
              f"{r['params_decoder'] / 1e6:>9.2f}M")
    out = Path(args.out) / "speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"plain_captions_per_s": round(plain_rate, 1), "rows": rows,
                               "steps": args.train_steps, "repeats": args.repeats,
                               "threads": torch.get_num_threads(),
                               "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    print(f"plain_captions_per_s={plain_rate:.1f}")
    for name, r in rows.items():
        print(f"{name.replace(':', '_')}_captions_per_s={r['captions_per_s']}")
    if "lstm:additive" in rows:
        print(f"additive_speedup_vs_plain={rows['lstm:additive']['vs_plain']}")


if __name__ == "__main__":
    main()

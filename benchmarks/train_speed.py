"""Training-speed benchmark: feature extraction images/s and decoder training captions/s, each
against a plain PyTorch baseline timed in the same run.

    python benchmarks/train_speed.py --data-dir ../shared/flickr8k
    python benchmarks/train_speed.py --skip-extract      # the training comparison alone

Extraction is timed over real images when ``--data-dir`` is given (synthetic JPEGs otherwise):
the plain eager PyTorch loop as a baseline, then captionkit's extraction pipeline (parallel
decoding, channels-last, frozen TorchScript trace) for efficientnet_lite0 and densenet121
(random weights: the speed is the same), end to end and in steady state (start-up removed).

Decoder training is timed with the real caption lengths and vocabulary of the training split
(synthetic when no data is given) over random preset-shaped features (N x D from the config's
encoder), through the same ``train_one_epoch`` that ``captionkit train`` runs. The baseline,
:class:`PlainSAT` below, is the tutorial-style Show-Attend-Tell loop written here from plain
PyTorch (no captionkit model, loss or training code): every caption carries its own copy of its
image's features, the attention projection ``W_f f`` is recomputed at every step for every
caption, every padded step is computed (no length sorting, no skipping finished captions), fp32;
an nn.LSTMCell, additive attention with SAT's gate, SAT's deep output, the doubly stochastic
penalty, Adam and gradient clipping, at the preset's sizes. Both sides train on the very same
length-bucketed batches (one loader, reset to the same epoch before every run), for the same
number of steps and repeats. Each figure is the median of ``--repeats`` runs after a warm-up;
the projected epoch is 30,000 captions (Flickr8k train) / captions/s.

Absolute CPU speeds differ ~1.6x between sessions on the shared machine, so compare sessions by
the ratio captionkit / plain (``train_speedup_vs_plain``), not by captions/s.

It ends with ``extract_images_per_s=`` (``nan`` under ``--skip-extract``),
``train_captions_per_s=``, ``epoch_seconds=`` and ``train_speedup_vs_plain=`` lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from captionkit.config import load_config
from captionkit.data import by_split, load_records
from captionkit.data.dataset import FeatureCaptionDataset, LengthBucketSampler
from captionkit.data.features import extract_features
from captionkit.data.images import load_image
from captionkit.data.records import CaptionRecord
from captionkit.data.vocab import Vocabulary
from captionkit.models.captioner import build_model
from captionkit.models.encoders import build_encoder
from captionkit.train.distributed import resolve_device
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


def extraction_rows(cfg, train: list[CaptionRecord], args) -> tuple[list[tuple], float]:
    """Table rows of the extraction benchmark and the headline (lite0 steady-state images/s)."""
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
    return rows, extract["efficientnet_lite0"]


class MemoryStore:
    """Random features standing in for a feature cache (values do not change the speed)."""

    def __init__(self, ids: list[str], n: int, d: int) -> None:
        self.features = torch.randn(len(ids), n, d).half()  # (I, N, D) like the fp16 cache
        self.row = {iid: i for i, iid in enumerate(ids)}

    def get(self, image_id: str) -> Tensor:
        return self.features[self.row[image_id]].float()  # (N, D)


class PlainSAT(nn.Module):
    """The baseline: a tutorial-style Show-Attend-Tell decoder in plain PyTorch. Same layers and
    sizes as captionkit's ``lstm`` decoder (attention with SAT's scalar gate, deep output
    ``L_o(E y + L_h h + L_z z)``), none of its data-layout work: ``feats`` has one row per
    caption, ``W_f f`` is recomputed at every step and every padded step is computed."""

    def __init__(self, vocab: int, feat_dim: int, embed: int, hidden: int, att: int,
                 dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.feat_att, self.hidden_att = nn.Linear(feat_dim, att), nn.Linear(hidden, att)
        self.att_score, self.gate = nn.Linear(att, 1), nn.Linear(hidden, 1)
        self.init_h, self.init_c = nn.Linear(feat_dim, hidden), nn.Linear(feat_dim, hidden)
        self.cell = nn.LSTMCell(embed + feat_dim, hidden)
        self.out_h, self.out_z = nn.Linear(hidden, embed), nn.Linear(feat_dim, embed, bias=False)
        self.dropout, self.out = nn.Dropout(dropout), nn.Linear(embed, vocab)

    def forward(self, feats: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """feats (C, N, D), tokens (C, T) -> logits (C, T, V), alphas (C, T, N)."""
        emb = self.embed(tokens)  # (C, T, E)
        mean = feats.mean(1)  # (C, D)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))  # (C, H) each
        logits, alphas = [], []
        for t in range(tokens.size(1)):
            keys = self.feat_att(feats)  # (C, N, D) -> (C, N, A), every step, every caption
            e = self.att_score(torch.tanh(keys + self.hidden_att(h).unsqueeze(1)))  # (C, N, 1)
            alpha = torch.softmax(e.squeeze(2), dim=1)  # (C, N)
            z = (alpha.unsqueeze(2) * feats).sum(1)  # (C, N, 1) * (C, N, D) -> (C, D)
            z = torch.sigmoid(self.gate(h)) * z  # (C, 1) * (C, D) -> (C, D)
            h, c = self.cell(torch.cat([emb[:, t], z], dim=1), (h, c))  # (C, E + D) -> (C, H)
            out = emb[:, t] + self.out_h(h) + self.out_z(z)  # (C, E)
            logits.append(self.out(self.dropout(out)))  # (C, V)
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1)  # (C, T, V), (C, T, N)


def plain_epoch(model: PlainSAT, tcfg, device: torch.device, pad_id: int):
    """``run(loader)``: one epoch of the baseline (masked cross-entropy + alpha_c x the doubly
    stochastic penalty, Adam, gradient-norm clipping, the loss read back every step)."""
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)

    def run(loader: DataLoader) -> None:
        model.train()
        for batch in loader:
            batch = batch.to(device)
            tokens = batch.tokens  # (C, T)
            feats = batch.features[batch.image_index]  # (B, N, D) -> (C, N, D) one per caption
            logits, alphas = model(feats, tokens[:, :-1])  # (C, T-1, V), (C, T-1, N)
            targets = tokens[:, 1:]  # (C, T-1)
            ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
            coverage = (alphas * targets.ne(pad_id).unsqueeze(2)).sum(1)  # (C, N)
            loss = ce + tcfg.alpha_c * ((1.0 - coverage) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            loss.item()
    return run


def _captionkit_epoch(model, opt, tcfg, device: torch.device, pad_id: int):
    """``run(loader)``: one epoch of captionkit's cross-entropy training, through the
    stage-based loop when ``captionkit.train.stages`` exists, else the older
    ``captionkit.train.fit.train_one_epoch``."""
    if importlib.util.find_spec("captionkit.train.stages") is None:
        from captionkit.train.fit import train_one_epoch as old_epoch

        return lambda loader: old_epoch(model, loader, opt, tcfg, device, 0, 10**9, pad_id,
                                        False)
    from captionkit.train import loop, stages

    stage = stages.CrossEntropy(model, opt, tcfg, device, pad_id=pad_id)
    return lambda loader: loop.train_one_epoch(stage, loader, tcfg, step=0, total_steps=10**9,
                                               progress=False)


def timed(run_epoch, loader: DataLoader, captions: int, repeats: int,
          device: torch.device) -> tuple[float, float]:
    """(median captions/s, peak MiB on CUDA else nan) of ``run_epoch(loader)``, every run from
    the same epoch of the sampler, so every run (and both sides) sees the same batches."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def run() -> None:
        loader.batch_sampler.position(0)
        run_epoch(loader)
        if device.type == "cuda":
            torch.cuda.synchronize()
    rate = median_rate(run, captions, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return rate, peak


def training_rates(cfg, records, vocab, batch_size: int, steps: int, repeats: int,
                   device: torch.device) -> dict[str, tuple[float, float]]:
    """{"captionkit" | "plain": (captions/s, peak MiB)} over the same ``steps``
    length-bucketed batches."""
    model = build_model(cfg, len(vocab), pretrained=False).to(device)
    n, d = model.encoder.grid[0] * model.encoder.grid[1], model.encoder.out_dim
    records = records[: batch_size * steps]
    ds = FeatureCaptionDataset(records, vocab, MemoryStore([r.image_id for r in records], n, d))
    loader = DataLoader(ds, batch_sampler=LengthBucketSampler.for_dataset(ds, batch_size),
                        collate_fn=ds.collate)
    captions = sum(len(c) for c in ds.captions)
    tcfg = replace(cfg.train, max_steps=None)
    ck = _captionkit_epoch(model, build_optimizer(model, tcfg), tcfg, device, vocab.pad_id)
    out = {"captionkit": timed(ck, loader, captions, repeats, device)}
    del model, ck
    dc = cfg.decoder
    plain = PlainSAT(len(vocab), d, dc.embed_dim, dc.hidden_dim, dc.attention_dim,
                     dc.dropout).to(device)
    out["plain"] = timed(plain_epoch(plain, tcfg, device, vocab.pad_id), loader, captions,
                         repeats, device)
    return out


def training_rows(cfg, train, vocab, args, device) -> tuple[list[tuple], dict, dict]:
    """Table rows of the training comparison, captionkit captions/s and the ratio to the
    baseline, both by batch size."""
    sizes = ([int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes
             else [cfg.train.batch_size] + ([256, 1024] if device.type == "cuda" else []))
    rows, rate, ratio = [], {}, {}
    for bs in sizes:
        steps = max(1, min(args.train_steps, len(train) // bs))
        r = training_rates(cfg, train, vocab, bs, steps, args.repeats, device)
        (rate[bs], peak), (plain, plain_peak) = r["captionkit"], r["plain"]
        ratio[bs] = rate[bs] / plain
        mem = "" if peak != peak else f", peak {peak:.0f} MiB"
        plain_mem = "" if plain_peak != plain_peak else f", peak {plain_peak:.0f} MiB"
        rows.append(("train", f"plain PyTorch SAT loop (baseline), batch {bs} images, "
                     f"fp32{plain_mem}", "captions/s", plain))
        rows.append(("train", f"{cfg.decoder.name} {cfg.decoder.hidden_dim}-d, batch {bs} images "
                     f"(~{5 * bs} captions), amp={cfg.train.amp}{mem}", "captions/s", rate[bs]))
        rows.append(("train", f"  projected Flickr8k epoch ({FLICKR8K_TRAIN_CAPTIONS} captions)",
                     "s", FLICKR8K_TRAIN_CAPTIONS / rate[bs]))
        rows.append(("train", "  captionkit / plain", "x", ratio[bs]))
    return rows, rate, ratio


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="Flickr8k folder (synthetic data when omitted)")
    ap.add_argument("--config", default=str(ROOT / "configs/flickr8k_lite0_lstm.yaml"))
    ap.add_argument("--extract-images", type=int, default=512)
    ap.add_argument("--baseline-images", type=int, default=64)
    ap.add_argument("--skip-extract", action="store_true",
                    help="time training only (extract_images_per_s is then nan)")
    ap.add_argument("--train-steps", type=int, default=10, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    ap.add_argument("--batch-sizes", help="comma list (default: 64 on CPU; 64,256,1024 on GPU)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
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
    rows, extract = ([], float("nan")) if args.skip_extract else extraction_rows(cfg, train, args)
    train_rows, train_rate, ratio = training_rows(cfg, train, vocab, args, device)
    print(f"\n{'stage':<8} {'what':<72} {'value':>10}  unit")
    for stage, what, unit, value in rows + train_rows:
        print(f"{stage:<8} {what:<72} {value:>10.1f}  {unit}")
    bs = cfg.train.batch_size if cfg.train.batch_size in train_rate else max(
        train_rate, key=train_rate.get)
    print(f"extract_images_per_s={extract:.1f}")
    print(f"train_captions_per_s={train_rate[bs]:.1f}")
    print(f"epoch_seconds={FLICKR8K_TRAIN_CAPTIONS / train_rate[bs]:.1f}")
    print(f"train_speedup_vs_plain={ratio[bs]:.2f}")


if __name__ == "__main__":
    main()

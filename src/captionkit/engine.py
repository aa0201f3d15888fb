"""Training and evaluation as small explicit functions: ``train_one_epoch``, ``evaluate``, ``fit``."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from captionkit.checkpoint import save_checkpoint
from captionkit.config import Config, TrainConfig
from captionkit.data import DATASETS, by_split, load_records
from captionkit.data.dataset import (
    FeatureCaptionDataset,
    ImageCaptionDataset,
    collate,
    partition_readable,
    require_records,
    write_skip_report,
)
from captionkit.data.features import FeatureStore, encoder_key
from captionkit.decoding import Hypothesis, greedy
from captionkit.errors import CaptionKitError
from captionkit.losses import caption_loss
from captionkit.metrics import corpus_bleu
from captionkit.models.captioner import CaptionModel, build_model
from captionkit.models.decoders import DECODERS
from captionkit.models.encoders import ENCODERS
from captionkit.vocab import Vocabulary


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_multiplier(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Learning-rate factor at ``step`` (pure): linear warm-up, then constant or cosine decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise CaptionKitError(f"unknown lr_schedule {schedule!r}; choose constant or cosine")


def build_optimizer(model: CaptionModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over the decoder, plus the encoder at its own learning rate when it is trainable."""
    groups = [{"params": list(model.decoder.parameters()), "lr": cfg.lr}]
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    if enc:
        groups.append({"params": enc, "lr": cfg.encoder_lr})
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)


def autocast(enabled: bool, device: torch.device):
    """bf16 autocast where the hardware does bf16 natively; a no-op context otherwise."""
    native = device.type == "cuda" or (device.type == "cpu"
                                        and torch.backends.mkldnn.is_available()
                                        and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and native)


def train_one_epoch(model: CaptionModel, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    cfg: TrainConfig, device: torch.device, step: int, total_steps: int,
                    pad_id: int = 0, progress: bool = True) -> tuple[dict[str, float], int]:
    """One pass over ``loader``. Returns (mean losses, global step after the epoch)."""
    model.train()
    sums = {"loss": 0.0, "ce": 0.0}
    n = 0
    bar = tqdm(loader, desc="train", disable=not progress, leave=False)
    for batch in bar:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_multiplier(step, total_steps, cfg.lr_schedule,
                                                   cfg.warmup_steps)
        tokens = batch.tokens.to(device)
        with autocast(cfg.amp, device):
            logits, alphas = model(batch.images.to(device), tokens[:, :-1],
                                   batch.image_index.to(device))  # (C, T-1, V), (C, T-1, N)
        loss, ce = caption_loss(logits.float(), alphas.float(), tokens[:, 1:], pad_id,
                                cfg.alpha_c)
        if not torch.isfinite(loss):
            raise CaptionKitError(f"loss became {loss.item()} at step {step}; "
                                  "the last checkpoint before it is kept in the run folder")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        n += 1
        sums["loss"] += loss.item()
        sums["ce"] += ce.item()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return {k: v / max(n, 1) for k, v in sums.items()}, step


@torch.no_grad()
def generate(model: CaptionModel, loader: DataLoader, vocab: Vocabulary, device: torch.device,
             max_len: int = 20, progress: bool = True) -> dict[int, Hypothesis]:
    """Greedy captions for every image of ``loader``: record index -> hypothesis."""
    model.eval()
    out: dict[int, Hypothesis] = {}
    for batch in tqdm(loader, desc="caption", disable=not progress, leave=False):
        x = batch.images.to(device)
        feats = x if x.dim() == 3 else model.encode(x)  # (B, N, D)
        hyps = greedy(model.decoder, feats, start_id=vocab.start_id, end_id=vocab.end_id,
                      max_len=max_len)
        out.update(zip(batch.indices.tolist(), hyps, strict=True))
    return out


def evaluate(model: CaptionModel, dataset: ImageCaptionDataset, vocab: Vocabulary,
             device: torch.device, batch_size: int = 32, max_len: int = 20,
             progress: bool = True) -> tuple[dict[str, float], dict[int, Hypothesis]]:
    """Caption every image of ``dataset`` greedily and score BLEU against its references."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    hyps = generate(model, loader, vocab, device, max_len, progress)
    refs = {str(i): list(dataset.records[i].captions) for i in hyps}
    res = {str(i): vocab.decode(h.tokens) for i, h in hyps.items()}
    return corpus_bleu(refs, res), hyps


@dataclass
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    best_metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def prepare_data(cfg: Config, run_dir: Path, progress: bool = True):
    """Read the dataset, skip unreadable images (listed in the run folder), build the vocab."""
    records = load_records(cfg.data)
    if cfg.data.feature_cache is not None:  # extraction already listed unreadable images
        train, dev, bad, bad_dev = by_split(records, "train"), by_split(records, "dev"), [], []
    else:
        train, bad = partition_readable(by_split(records, "train"), progress)
        dev, bad_dev = partition_readable(by_split(records, "dev"), progress)
    if bad or bad_dev:
        write_skip_report(bad + bad_dev, run_dir / "skipped_images.txt")
        print(f"skipped {len(bad) + len(bad_dev)} unreadable image(s); "
              f"see {run_dir / 'skipped_images.txt'}")
    require_records(train, "train", cfg.data.root)
    require_records(dev, "dev", cfg.data.root)
    vocab = Vocabulary.build((c for r in train for c in r.captions), cfg.data.min_freq,
                             cfg.data.max_len)
    return train, dev, vocab


def make_datasets(cfg: Config, model: CaptionModel, train: list, dev: list, vocab: Vocabulary):
    """Image datasets, or feature-cache datasets when the encoder is frozen and a cache is set
    (the cache must have been built by this very encoder: name, weights and preprocessing)."""
    if cfg.data.feature_cache is None:
        pre = model.encoder.preprocess
        return ImageCaptionDataset(train, vocab, pre), ImageCaptionDataset(dev, vocab, pre)
    if cfg.encoder.trainable:
        raise CaptionKitError("data.feature_cache needs a frozen encoder "
                              "(encoder.trainable=false); a trained encoder reads images")
    store = FeatureStore(cfg.data.feature_cache, encoder_key(model.encoder))
    missing = [r.image_id for r in train + dev if r.image_id not in store]
    if missing:
        print(f"{len(missing)} image(s) are not in the feature cache (unreadable at extraction, "
              f"see {cfg.data.feature_cache}/failed.txt) and are skipped")
    train = [r for r in train if r.image_id in store]
    dev = [r for r in dev if r.image_id in store]
    return FeatureCaptionDataset(train, vocab, store), FeatureCaptionDataset(dev, vocab, store)


def check_names(cfg: Config) -> None:
    """Fail before any work when the config names an unknown dataset, encoder or decoder."""
    DATASETS.get(cfg.data.dataset)
    ENCODERS.get(cfg.encoder.name)
    DECODERS.get(cfg.decoder.name)


def fit(cfg: Config, progress: bool = True) -> FitResult:
    """Train a captioner as ``cfg`` says, validating each epoch and keeping the best checkpoint
    (highest dev BLEU-4) in ``<out_dir>/best`` and the latest in ``<out_dir>/last``."""
    check_names(cfg)
    t0 = time.perf_counter()
    run_dir = Path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    train_recs, dev_recs, vocab = prepare_data(cfg, run_dir, progress)
    vocab.save(run_dir / "vocab.json")
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, len(vocab)).to(device)
    train_ds, dev_ds = make_datasets(cfg, model, train_recs, dev_recs, vocab)
    if train_ds.dropped:
        print(f"dropped {train_ds.dropped} training caption(s) with no known words")
    loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True,
                        collate_fn=collate, num_workers=cfg.data.num_workers,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    optimizer = build_optimizer(model, cfg.train)
    total = cfg.train.epochs * len(loader)
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    step, best, history = 0, None, []
    for epoch in range(1, cfg.train.epochs + 1):
        losses, step = train_one_epoch(model, loader, optimizer, cfg.train, device, step, total,
                                       vocab.pad_id, progress)
        metrics, _ = evaluate(model, dev_ds, vocab, device, cfg.train.batch_size,
                              cfg.train.eval_max_len, progress)
        row = {"epoch": epoch, "step": step, **losses, **metrics,
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"epoch {epoch}: loss {losses['loss']:.3f}  dev BLEU-4 {metrics['BLEU-4']:.3f}  "
              f"({row['seconds']:.0f}s)")
        save_checkpoint(run_dir / "last", model, cfg, vocab, epoch, metrics)
        if best is None or metrics["BLEU-4"] > best["BLEU-4"]:
            best = metrics
            save_checkpoint(run_dir / "best", model, cfg, vocab, epoch, metrics)
        if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
            break
    return FitResult(run_dir, run_dir / "best", best or {}, history,
                     time.perf_counter() - t0)

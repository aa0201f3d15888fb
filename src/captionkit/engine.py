"""Training and evaluation as small explicit functions: ``train_one_epoch``, ``evaluate``, ``fit``."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from captionkit.checkpoint import load_checkpoint, save_checkpoint
from captionkit.config import Config, TrainConfig
from captionkit.data import DATASETS, by_split, load_records
from captionkit.data.dataset import (
    FeatureCaptionDataset,
    ImageCaptionDataset,
    LengthBucketSampler,
    collate,
    partition_readable,
    require_records,
    write_skip_report,
)
from captionkit.data.features import FeatureStore, encoder_key
from captionkit.decoding import Hypothesis, beam_search
from captionkit.errors import CaptionKitError
from captionkit.losses import caption_loss
from captionkit.metrics import corpus_bleu_cider
from captionkit.models.captioner import CaptionModel, build_model
from captionkit.models.decoders import DECODERS
from captionkit.models.encoders import ENCODERS
from captionkit.schedule import lr_multiplier
from captionkit.scst import reward_scorer, train_scst_epoch
from captionkit.vocab import Vocabulary


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
             max_len: int = 20, progress: bool = True, beam_size: int = 1,
             length_penalty: float = 0.0, no_repeat_ngram: int = 0) -> dict[int, Hypothesis]:
    """The best caption (beam search; greedy at ``beam_size=1``) for every image of ``loader``:
    record index -> hypothesis. Batches may hold pixels or cached features."""
    model.eval()
    out: dict[int, Hypothesis] = {}
    for batch in tqdm(loader, desc="caption", disable=not progress, leave=False):
        x = batch.images.to(device)
        feats = x if x.dim() == 3 else model.encode(x)  # (B, N, D)
        beams = beam_search(model.decoder, feats, start_id=vocab.start_id, end_id=vocab.end_id,
                            beam_size=beam_size, max_len=max_len, length_penalty=length_penalty,
                            no_repeat_ngram=no_repeat_ngram)
        out.update(zip(batch.indices.tolist(), (b[0] for b in beams), strict=True))
    return out


def evaluate(model: CaptionModel, dataset: ImageCaptionDataset, vocab: Vocabulary,
             device: torch.device, batch_size: int = 32, max_len: int = 20,
             progress: bool = True) -> tuple[dict[str, float], dict[int, Hypothesis]]:
    """Caption every image of ``dataset`` greedily; BLEU-1..4 and CIDEr-D on its references."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    hyps = generate(model, loader, vocab, device, max_len, progress)
    refs = {str(i): list(dataset.records[i].captions) for i in hyps}
    res = {str(i): vocab.decode(h.tokens) for i, h in hyps.items()}
    return corpus_bleu_cider(refs, res), hyps


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


def init_from_checkpoint(cfg: Config, device: torch.device) -> tuple[CaptionModel, Vocabulary]:
    """Model and vocabulary of ``cfg.train.init``; its architecture must be the config's."""
    if not cfg.train.init:
        raise CaptionKitError(f"train.stage={cfg.train.stage} starts from a trained model: "
                              "set train.init=CHECKPOINT (e.g. --init runs/xe/best)")
    model, init_cfg, vocab, _ = load_checkpoint(cfg.train.init, str(device))
    diff = [f"encoder.name: checkpoint {init_cfg.encoder.name!r}, config {cfg.encoder.name!r}"]
    diff = diff if init_cfg.encoder.name != cfg.encoder.name else []
    for k, v in vars(init_cfg.decoder).items():
        if k != "dropout" and getattr(cfg.decoder, k) != v:
            diff.append(f"decoder.{k}: checkpoint {v!r}, config {getattr(cfg.decoder, k)!r}")
    if diff:
        raise CaptionKitError(f"{cfg.train.init} does not match the config: " + "; ".join(diff))
    return model, vocab


def epoch_runner(cfg: Config, train_ds, vocab: Vocabulary, device: torch.device, total: int,
                 progress: bool):
    """``run(model, loader, optimizer, step) -> (losses, step)`` for the configured stage."""
    t = cfg.train
    if t.stage == "xe":
        return lambda m, loader, opt, step: train_one_epoch(
            m, loader, opt, t, device, step, total, vocab.pad_id, progress)
    if t.stage == "scst":
        cider = reward_scorer(train_ds)
        return lambda m, loader, opt, step: train_scst_epoch(
            m, loader, opt, cider, vocab, t, device, step, total, progress)
    raise CaptionKitError(f"unknown train.stage {t.stage!r}; choose xe or scst")


def fit(cfg: Config, progress: bool = True) -> FitResult:
    """Train a captioner as ``cfg`` says (cross-entropy, or SCST from ``train.init``),
    validating each epoch and keeping the best checkpoint by ``train.select_metric`` on dev in
    ``<out_dir>/best`` and the latest in ``<out_dir>/last``."""
    check_names(cfg)
    t0 = time.perf_counter()
    run_dir = Path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    train_recs, dev_recs, vocab = prepare_data(cfg, run_dir, progress)
    device = resolve_device(cfg.train.device)
    if cfg.train.stage == "xe":
        model = build_model(cfg, len(vocab)).to(device)
    else:
        model, vocab = init_from_checkpoint(cfg, device)
    vocab.save(run_dir / "vocab.json")
    train_ds, dev_ds = make_datasets(cfg, model, train_recs, dev_recs, vocab)
    if train_ds.dropped:
        print(f"dropped {train_ds.dropped} training caption(s) with no known words")
    sampler = LengthBucketSampler.for_dataset(train_ds, cfg.train.batch_size, cfg.train.seed)
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.num_workers)
    optimizer = build_optimizer(model, cfg.train)
    total = cfg.train.epochs * len(loader)
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    run = epoch_runner(cfg, train_ds, vocab, device, total, progress)
    return train_loop(cfg, model, loader, dev_ds, optimizer, run, vocab, device, run_dir, t0,
                      progress)


def train_loop(cfg: Config, model, loader, dev_ds, optimizer, run, vocab, device, run_dir: Path,
               t0: float, progress: bool) -> FitResult:
    """Epochs of ``run`` with dev validation, checkpoints and early stopping."""
    key = cfg.train.select_metric
    step, best, best_epoch, history = 0, None, 0, []
    for epoch in range(1, cfg.train.epochs + 1):
        losses, step = run(model, loader, optimizer, step)
        metrics, _ = evaluate(model, dev_ds, vocab, device, cfg.train.batch_size,
                              cfg.train.eval_max_len, progress)
        if key not in metrics:
            raise CaptionKitError(f"train.select_metric {key!r} is not one of {list(metrics)}")
        row = {"epoch": epoch, "step": step, **losses, **metrics,
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"epoch {epoch}: loss {losses['loss']:.3f}  dev BLEU-4 {metrics['BLEU-4']:.3f}  "
              f"CIDEr-D {metrics['CIDEr-D']:.3f}  ({row['seconds']:.0f}s)")
        save_checkpoint(run_dir / "last", model, cfg, vocab, epoch, metrics)
        if best is None or metrics[key] > best[key]:
            best, best_epoch = metrics, epoch
            save_checkpoint(run_dir / "best", model, cfg, vocab, epoch, metrics)
        if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
            break
        if cfg.train.patience and epoch - best_epoch >= cfg.train.patience:
            print(f"early stop: no better dev {key} for {cfg.train.patience} epoch(s)")
            break
    return FitResult(run_dir, run_dir / "best", best or {}, history,
                     time.perf_counter() - t0)

"""Training and evaluation as small explicit functions: ``train_one_epoch``, ``evaluate``, ``fit``."""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captionkit.checkpoint import load_checkpoint
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
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError, NonFiniteLossError
from captionkit.infer.evaluation import evaluate
from captionkit.models.captioner import CaptionModel, build_model
from captionkit.models.decoders import DECODERS
from captionkit.models.encoders import ENCODERS
from captionkit.models.precision import autocast
from captionkit.progress import bar as progress_bar
from captionkit.train.distributed import Dist, all_sum, setup, wrap
from captionkit.train.gpu.grouped import grouped_inputs, supports
from captionkit.train.gpu.step import FastTrainStep, kernel_available
from captionkit.train.loop import FitResult, TrainLoop
from captionkit.train.losses import caption_loss
from captionkit.train.optim import build_optimizer, set_lr, update
from captionkit.train.resume import Progress, data_fingerprint, has_resume, load_resume
from captionkit.train.scst import reward_scorer, train_scst_epoch


def train_one_epoch(model: CaptionModel, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    cfg: TrainConfig, device: torch.device, step: int, total_steps: int,
                    pad_id: int = 0, progress: bool = True, on_step=None,
                    d: Dist | None = None) -> tuple[dict[str, float], int]:
    """One pass over ``loader``. Returns (mean losses, global step after the epoch).
    ``on_step(step, batches_done)`` is called after every optimizer step (checkpointing).
    Under data parallelism (``d``) the loss is normalised by the global batch."""
    d = d or Dist()
    model.train()
    sums = {"loss": 0.0, "ce": 0.0}
    n = 0
    bar = progress_bar(loader, "train", progress)
    for batch in bar:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        set_lr(optimizer, step, total_steps, cfg)
        tokens = batch.tokens.to(device)
        with autocast(cfg.amp, device):
            logits, alphas = model(batch.images.to(device), tokens[:, :-1],
                                   batch.image_index.to(device))  # (C, T-1, V), (C, T-1, N)
        counts = None
        if d.active:  # divide by global counts / world: DDP's gradient mean then is exact
            local = torch.tensor([float(tokens[:, 1:].ne(pad_id).sum()), tokens.size(0)],
                                 device=device)
            counts = tuple(all_sum(local, d) / d.world)
        loss, ce = caption_loss(logits.float(), alphas.float(), tokens[:, 1:], pad_id,
                                cfg.alpha_c, counts)
        update(model, optimizer, loss, cfg, step)
        step += 1
        n += 1
        logged = all_sum(torch.stack([loss.detach(), ce.detach()]), d) / d.world
        sums["loss"] += logged[0].item()
        sums["ce"] += logged[1].item()
        bar.set_postfix(loss=f"{logged[0].item():.3f}")
        if on_step is not None:
            on_step(step, n)
    return {k: v / max(n, 1) for k, v in sums.items()}, step

# torch.compile modes of the fast step (its CUDA graphs are its own, hence no cudagraph modes):
# max-autotune tunes the step's GEMM tiles, ~1.5 min per batch shape (+18% at 32 captions a
# batch on an H200, benchmarks/NOTES.md), worth it for long runs of small batches
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def use_fast_path(cfg: Config, model: CaptionModel, device: torch.device,
                  d: Dist | None = None) -> bool:
    """Whether cross-entropy training runs :class:`~captionkit.train.gpu.step.FastTrainStep`
    (``train.fast_path``: ``always``, ``never``, or ``auto`` = on CUDA when it applies: an attention
    RNN decoder over a frozen encoder, one process)."""
    mode, t = cfg.train.fast_path, cfg.train
    if mode not in ("auto", "always", "never"):
        raise CaptionKitError(f"train.fast_path must be auto, always or never, not {mode!r}")
    if t.fast_hoist_images < 0:
        raise CaptionKitError(f"train.fast_hoist_images must be >= 0 (0 = never), not "
                              f"{t.fast_hoist_images}")
    if t.fast_compile_mode not in COMPILE_MODES:
        raise CaptionKitError(f"train.fast_compile_mode must be one of {', '.join(COMPILE_MODES)}"
                              f", not {t.fast_compile_mode!r}")
    frozen = not cfg.encoder.trainable and cfg.encoder.finetune_blocks == 0
    ok = t.stage == "xe" and supports(model.decoder) and frozen and not (d and d.active)
    if mode == "always" and not ok:
        raise CaptionKitError("train.fast_path=always needs cross-entropy training of an lstm/gru "
                              "decoder over a frozen encoder in one process")
    return ok and (mode == "always" or (mode == "auto" and device.type == "cuda"))


def train_one_epoch_fast(model: CaptionModel, loader: DataLoader, fast: FastTrainStep,
                         cfg: TrainConfig, device: torch.device, step: int, total_steps: int,
                         k: int, progress: bool = True,
                         on_step=None) -> tuple[dict[str, float], int]:
    """:func:`train_one_epoch` through the fast step: captions grouped by image (at most ``k``
    each), losses summed on the device and read once at the end (and every 100 steps, to stop
    on a non-finite loss: that update is skipped on the device)."""
    model.train()
    fast.step_no.fill_(step)
    acc = torch.zeros(3, device=device)  # sums of (loss, ce, finite)
    n = 0
    bar = progress_bar(loader, "train", progress)
    for batch in bar:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        set_lr(fast.optimizer, step, total_steps, cfg)
        feats, tokens = grouped_inputs(batch, k, device)
        if feats.dim() != 3:  # pixels through the frozen encoder
            with torch.no_grad():
                feats = model.encode(feats)  # (B, N, D)
        acc += fast(feats, tokens)
        step, n = step + 1, n + 1
        if n % 100 == 0:
            check_finite(fast)
            bar.set_postfix(loss=f"{acc[0].item() / n:.3f}")
        if on_step is not None:
            on_step(step, n)
    check_finite(fast)
    loss, ce, _ = (acc / max(n, 1)).tolist()
    return {"loss": loss, "ce": ce}, step


def check_finite(fast: FastTrainStep) -> None:
    bad = int(fast.first_bad)
    if bad >= 0:
        raise NonFiniteLossError(f"loss became non-finite at step {bad} (its update was "
                                 "skipped)", bad)


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
    if cfg.encoder.trainable or cfg.encoder.finetune_blocks > 0:
        raise CaptionKitError("data.feature_cache needs a frozen encoder (encoder.trainable="
                              "false, finetune_blocks=0); a trained encoder reads images")
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
    for m in model.modules():  # dropout is a training choice, not part of the architecture
        if isinstance(m, torch.nn.Dropout):
            m.p = cfg.decoder.dropout
    return model, vocab


def epoch_runner(cfg: Config, train_ds, vocab: Vocabulary, device: torch.device, total: int,
                 progress: bool, d: Dist | None = None, fast: FastTrainStep | None = None):
    """``run(model, loader, optimizer, step, on_step) -> (losses, step)`` for the stage
    (through ``fast`` when given)."""
    t, d = cfg.train, d or Dist()
    if fast is not None:
        k = max((len(cs) for cs in train_ds.captions), default=1)
        return lambda m, loader, opt, step, on_step: train_one_epoch_fast(
            m, loader, fast, t, device, step, total, k, progress, on_step)
    if t.stage == "xe":
        return lambda m, loader, opt, step, on_step: train_one_epoch(
            m, loader, opt, t, device, step, total, vocab.pad_id, progress, on_step, d)
    if t.stage == "scst":
        if d.active:
            raise CaptionKitError("SCST under torchrun is not supported yet; run it in one "
                                  "process")
        cider = reward_scorer(train_ds, t.scst_eos)
        return lambda m, loader, opt, step, on_step: train_scst_epoch(
            m, loader, opt, cider, vocab, t, device, step, total, progress, on_step)
    raise CaptionKitError(f"unknown train.stage {t.stage!r}; choose xe or scst")


def fit(cfg: Config, progress: bool = True, resume: bool = False) -> FitResult:
    """Train a captioner as ``cfg`` says (cross-entropy, or SCST from ``train.init``),
    validating each epoch and keeping the best checkpoint by ``train.select_metric`` on dev in
    ``<out_dir>/best`` and the latest in ``<out_dir>/last``. With ``resume`` a run folder's
    resume point is continued exactly (same weights as a run that was never interrupted)."""
    check_names(cfg)
    t0 = time.perf_counter()
    run_dir = Path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    train_recs, dev_recs, vocab = prepare_data(cfg, run_dir, progress)
    d, device = setup(cfg.train.device)
    if cfg.train.stage == "xe":
        model = build_model(cfg, len(vocab)).to(device)
    else:
        model, vocab = init_from_checkpoint(cfg, device)
    vocab.save(run_dir / "vocab.json")
    train_ds, dev_ds = make_datasets(cfg, model, train_recs, dev_recs, vocab)
    if train_ds.dropped:
        print(f"dropped {train_ds.dropped} training caption(s) with no known words")
    sampler = LengthBucketSampler.for_dataset(train_ds, cfg.train.batch_size, cfg.train.seed,
                                              cfg.train.bucket_pool)
    sampler.rank, sampler.world = d.rank, d.world
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.num_workers, generator=torch.Generator(),
                        pin_memory=device.type == "cuda")
    fast_path = use_fast_path(cfg, model, device, d)
    optimizer = build_optimizer(model, cfg.train, fused=fast_path)
    total = cfg.train.epochs * len(loader)
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    fingerprint = data_fingerprint(train_ds.records, dev_ds.records, vocab)
    state = Progress()
    if resume and has_resume(run_dir):
        state = load_resume(run_dir, model, optimizer, fingerprint)
        print(f"resuming at epoch {state.epoch}, batch {state.batch} (step {state.step})")
    fast = None
    if fast_path:
        on_gpu = device.type == "cuda"
        fast = FastTrainStep(model, optimizer, cfg.train, compile=on_gpu, graphs=on_gpu,
                             pad_id=vocab.pad_id, kernel=kernel_available(device),
                             hoist_max_images=cfg.train.fast_hoist_images,
                             compile_mode=cfg.train.fast_compile_mode)
    run = epoch_runner(cfg, train_ds, vocab, device, total, progress and d.main, d, fast)

    def validate() -> tuple[dict[str, float], list[str]]:
        metrics, hyps = evaluate(model, dev_ds, vocab, device, cfg.train.batch_size,
                                 cfg.train.eval_max_len, progress and d.main)
        samples = [f"{vocab.decode(h.tokens)}  (reference: {dev_ds.records[i].captions[0]})"
                   for i, h in list(hyps.items())[:5]]
        return metrics, samples

    loop = TrainLoop(cfg, model, optimizer, run_dir, fingerprint, state, d,
                     wrap(model, d, device))
    return loop.run(run, loader, validate, vocab, t0)

"""``fit``: a training run from a config, as small explicit functions: read the data, build
the model (or load ``train.init``), pick the stage, and hand it to the epoch loop
(:mod:`captionkit.train.loop`)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captionkit.checkpoint import load_checkpoint
from captionkit.config import Config
from captionkit.data import DATASETS, by_split, load_records
from captionkit.data.dataset import (
    ImageCaptionDataset,
    LengthBucketSampler,
    caption_dataset,
    require_records,
    usable_records,
    write_skip_report,
)
from captionkit.data.features import FeatureStore, encoder_key
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError
from captionkit.models.captioner import CaptionModel, build_model
from captionkit.models.decoders import check_decoder_config, decoder_fields
from captionkit.models.encoders import ENCODERS
from captionkit.train.distributed import Dist, resolve_device, setup, wrap
from captionkit.train.gpu.step import use_fast_path
from captionkit.train.loop import FitResult, TrainLoop
from captionkit.train.optim import build_optimizer
from captionkit.train.resume import (
    Progress,
    check_run_folder,
    clear_run_folder,
    data_fingerprint,
    has_resume,
    load_resume,
)
from captionkit.train.stages import make_stage


def prepare_data(cfg: Config, progress: bool = True):
    """Read the dataset, set unreadable images aside (returned, to be listed in the run
    folder), build the vocab.
    With a feature cache, the images in it are picked later (:func:`make_datasets`: the
    cache's key needs the built encoder)."""
    records = load_records(cfg.data)
    train, dev, bad = by_split(records, "train"), by_split(records, "dev"), []
    if cfg.data.feature_cache is None:  # extraction already listed unreadable images
        train, bad_train = usable_records(train, None, progress)
        dev, bad_dev = usable_records(dev, None, progress)
        bad = bad_train + bad_dev
    require_records(train, "train", cfg.data.root)
    require_records(dev, "dev", cfg.data.root)
    vocab = Vocabulary.build((c for r in train for c in r.captions), cfg.data.min_freq,
                             cfg.data.max_len)
    return train, dev, vocab, bad


def make_datasets(cfg: Config, model: CaptionModel, train: list, dev: list, vocab: Vocabulary
                  ) -> tuple[ImageCaptionDataset, ImageCaptionDataset]:
    """Image datasets, or feature-cache datasets when the encoder is frozen and a cache is set
    (the cache must have been built by this very encoder: name, weights and preprocessing)."""
    store = None
    if cfg.data.feature_cache is not None:
        store = FeatureStore(cfg.data.feature_cache, encoder_key(model.encoder))
        train, missing = usable_records(train, store)
        dev, missing_dev = usable_records(dev, store)
        if missing or missing_dev:
            print(f"{len(missing) + len(missing_dev)} image(s) are not in the feature cache "
                  f"(unreadable at extraction, see {cfg.data.feature_cache}/failed.txt) and are "
                  "skipped")
    pre = model.encoder.preprocess
    return caption_dataset(train, vocab, pre, store), caption_dataset(dev, vocab, pre, store)


def check_names(cfg: Config) -> None:
    """Fail before any work when the config names an unknown dataset, encoder or decoder, or
    sets the named decoder's own fields inconsistently."""
    DATASETS.get(cfg.data.dataset)
    if cfg.data.feature_cache is not None and (cfg.encoder.trainable
                                               or cfg.encoder.finetune_blocks > 0):
        raise CaptionKitError("data.feature_cache needs a frozen encoder (encoder.trainable="
                              "false, finetune_blocks=0); a trained encoder reads images")
    ENCODERS.get(cfg.encoder.name)
    check_decoder_config(cfg.decoder)


def init_from_checkpoint(cfg: Config, device: torch.device) -> tuple[CaptionModel, Vocabulary]:
    """Model and vocabulary of ``cfg.train.init``; its architecture must be the config's, and
    which encoder stages train is this config's (``encoder.trainable``/``finetune_blocks``)."""
    if not cfg.train.init:
        raise CaptionKitError(f"train.stage={cfg.train.stage} starts from a trained model: "
                              "set train.init=CHECKPOINT (e.g. --init runs/xe/best)")
    model, init_cfg, vocab, _ = load_checkpoint(cfg.train.init, str(device))
    diff = [f"encoder.name: checkpoint {init_cfg.encoder.name!r}, config {cfg.encoder.name!r}"]
    diff = diff if init_cfg.encoder.name != cfg.encoder.name else []
    fields = ("name", *decoder_fields(init_cfg.decoder))  # only what the decoder reads
    for k in fields:
        v, want = getattr(init_cfg.decoder, k), getattr(cfg.decoder, k)
        if k != "dropout" and want != v:
            diff.append(f"decoder.{k}: checkpoint {v!r}, config {want!r}")
    if diff:
        raise CaptionKitError(f"{cfg.train.init} does not match the config: " + "; ".join(diff))
    for m in model.modules():  # dropout is a training choice, not part of the architecture
        if isinstance(m, torch.nn.Dropout):
            m.p = cfg.decoder.dropout
    model.encoder.set_training(cfg.encoder.trainable, cfg.encoder.finetune_blocks)  # this run's
    return model, vocab


def make_loader(cfg: Config, train_ds: ImageCaptionDataset, d: Dist,
                device: torch.device) -> DataLoader:
    """Length-bucketed, seeded training batches (this process's slice under torchrun)."""
    sampler = LengthBucketSampler.for_dataset(train_ds, cfg.train.batch_size, cfg.train.seed,
                                              cfg.train.bucket_pool)
    sampler.rank, sampler.world = d.rank, d.world
    return DataLoader(train_ds, batch_sampler=sampler, collate_fn=train_ds.collate,
                      num_workers=cfg.data.num_workers, generator=torch.Generator(),
                      pin_memory=device.type == "cuda")


def fit(cfg: Config, progress: bool = True, resume: bool = False,
        overwrite: bool = False) -> FitResult:
    """Train a captioner as ``cfg`` says (cross-entropy, or SCST from ``train.init``),
    validating each epoch and keeping the best checkpoint by ``train.select_metric`` on dev in
    ``<out_dir>/best`` and the latest in ``<out_dir>/last``. With ``resume`` a run folder's
    resume point is continued exactly (same weights as a run that was never interrupted).

    A run folder that already holds a run is refused unless ``resume`` or ``overwrite``
    (which removes the old run's files first); nothing is written into it before the config,
    the device and the data have been checked. A config with ``train.stages`` runs that
    recipe (:func:`captionkit.train.recipe.fit_stages`); an ``xe`` stage with ``train.init``
    starts from that checkpoint (e.g. to fine-tune its encoder)."""
    if cfg.train.stages:
        from captionkit.train.recipe import fit_stages

        return fit_stages(cfg, progress, resume, overwrite)
    check_names(cfg)
    resolve_device(cfg.train.device)  # no CUDA device: one line now, not a traceback later
    cfg = cfg.absolute_paths()  # the run folder's config and checkpoints work from anywhere
    t0 = time.perf_counter()
    run_dir = Path(cfg.train.out_dir)
    check_run_folder(run_dir, resume, overwrite)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    train_recs, dev_recs, vocab, bad = prepare_data(cfg, progress)
    d, device = setup(cfg.train.device)
    if cfg.train.stage == "xe" and not cfg.train.init:
        model = build_model(cfg, len(vocab)).to(device)
    else:
        model, vocab = init_from_checkpoint(cfg, device)
    train_ds, dev_ds = make_datasets(cfg, model, train_recs, dev_recs, vocab)
    if overwrite and not resume and d.main:
        clear_run_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    vocab.save(run_dir / "vocab.json")
    if bad:
        write_skip_report(bad, run_dir / "skipped_images.txt")
        print(f"skipped {len(bad)} unreadable image(s); see {run_dir / 'skipped_images.txt'}")
    if train_ds.dropped:
        print(f"dropped {train_ds.dropped} training caption(s) with no known words")
    loader = make_loader(cfg, train_ds, d, device)
    fast = use_fast_path(cfg, model, device, d)
    optimizer = build_optimizer(model, cfg.train, fused=fast)
    total = cfg.train.epochs * len(loader)
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    fingerprint = data_fingerprint(train_ds.records, dev_ds.records, vocab)
    state = Progress()
    if resume and has_resume(run_dir):
        state = load_resume(run_dir, model, optimizer, fingerprint)
        print(f"resuming at epoch {state.epoch}, batch {state.batch} (step {state.step})")
    stage = make_stage(cfg, model, wrap(model, d, device), optimizer, train_ds, vocab, device,
                       d, fast)
    stage.load_state(state.stage)
    loop = TrainLoop(cfg, model, optimizer, run_dir, fingerprint, state, d, vocab, dev_ds,
                     device, total, progress)
    return loop.run(stage, loader, t0)

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from captionkit.config import Config
from captionkit.data import by_split, load_records
from captionkit.data.dataset import ImageCaptionDataset, collate
from captionkit.data.vocab import Vocabulary
from captionkit.infer.evaluation import evaluate
from captionkit.models.captioner import build_model
from captionkit.train.fit import fit
from captionkit.train.loop import train_one_epoch
from captionkit.train.optim import build_optimizer
from captionkit.train.stages import CrossEntropy


def test_collate_flattens_captions_per_image():
    items = [(torch.zeros(3, 4, 4), [[1, 5, 2], [1, 6, 7, 2]], 0), (torch.ones(3, 4, 4), [[1, 2]], 3)]
    b = collate(items, "pixels")
    assert b.pixels.shape == (2, 3, 4, 4) and b.features is None and b.tokens.shape == (3, 4)
    f = collate([(torch.zeros(6, 5), [[1, 2]], 0)], "features")  # a feature cache's (N, D)
    assert f.features.shape == (1, 6, 5) and f.pixels is None and f.num_images == 1
    assert b.image_index.tolist() == [0, 0, 1] and b.indices.tolist() == [0, 3]
    assert b.tokens[2].tolist() == [1, 2, 0, 0]


def _xe_stage(cfg):
    """A cross-entropy stage on the tiny training split: (stage, loader, vocab, optimizer)."""
    records = load_records(cfg.data)
    train = by_split(records, "train")
    vocab = Vocabulary.build(c for r in train for c in r.captions)
    model = build_model(cfg, len(vocab))
    ds = ImageCaptionDataset(train, vocab, model.encoder.preprocess)
    loader = DataLoader(ds, batch_size=8, shuffle=False, collate_fn=ds.collate)
    opt = build_optimizer(model, cfg.train.__class__(lr=3e-3, encoder_lr=3e-3))
    stage = CrossEntropy(model, opt, cfg.train, torch.device("cpu"), vocab.pad_id)
    return stage, loader, vocab, opt


def test_training_lowers_the_loss(tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config
    stage, loader, vocab, opt = _xe_stage(cfg)
    first, step = train_one_epoch(stage, loader, cfg.train, 0, 40, progress=False)
    for _ in range(8):
        last, step = train_one_epoch(stage, loader, cfg.train, step, 40, progress=False)
    assert step == 36
    assert last["loss"] < 0.75 * first["loss"]
    model, ds = stage.model, loader.dataset
    metrics, hyps = evaluate(model, ds, vocab, torch.device("cpu"), max_len=8, progress=False)
    assert set(metrics) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"}
    assert len(hyps) == len(ds)


def test_fit_writes_run_folder(tiny_config):
    result = fit(tiny_config.override(["train.epochs=2"]), progress=False)
    run = result.run_dir
    assert (run / "config.yaml").is_file() and (run / "vocab.json").is_file()
    assert (run / "best" / "model.safetensors").is_file() and (run / "last" / "meta.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "BLEU-4" in rows[0]
    assert Config.from_dict(json.loads((run / "best" / "meta.json").read_text())["config"]) \
        == Config.from_dict(tiny_config.override(["train.epochs=2"]).to_dict())


def test_fit_skips_unreadable_images_and_lists_them(tiny_config, tmp_path):
    import shutil

    root = tmp_path / "shapes_copy"
    shutil.copytree(tiny_config.data.root, root)
    records = load_records(tiny_config.data.__class__(**{**tiny_config.data.__dict__,
                                                          "root": str(root)}))
    victim = by_split(records, "train")[0].image
    Path(victim).write_bytes(b"not a png")
    cfg = tiny_config.override([f"data.root={root}", "train.max_steps=1"])
    result = fit(cfg, progress=False)
    report = (result.run_dir / "skipped_images.txt").read_text()
    assert victim in report and len(report.splitlines()) == 1


def test_max_steps_stops_early(tiny_config):
    result = fit(tiny_config.override(["train.max_steps=2", "train.epochs=5"]), progress=False)
    assert result.history[-1]["step"] == 2 and len(result.history) == 1


def test_fit_trains_and_saves_any_attention_mechanism(tiny_config):
    """The mechanism is part of the checkpoint's config (meta.json) and comes back on load."""
    import captionkit

    cfg = tiny_config.override(["decoder.attention=scaled_dot", "decoder.num_heads=2",
                                "train.max_steps=2"])
    result = fit(cfg, progress=False)
    meta = json.loads((result.best_checkpoint / "meta.json").read_text())
    assert meta["config"]["decoder"]["attention"] == "scaled_dot"
    captioner = captionkit.load(result.best_checkpoint, precision="fp32")
    assert type(captioner.model.decoder.attention).__name__ == "ScaledDotAttention"
    records = by_split(load_records(cfg.data), "dev")
    res = captioner.caption(records[0].image)
    assert res.attention.shape == (len(res.words), *captioner.grid)


def test_hard_attention_trains_with_reinforce(tiny_config):
    """The xe stage adds hard attention's REINFORCE terms (a moving-average baseline of the
    captions' log-likelihood) and training lowers the cross-entropy."""
    torch.manual_seed(0)
    cfg = tiny_config.override(["decoder.attention=hard"])
    stage, loader, vocab, opt = _xe_stage(cfg)
    assert stage.hard and stage.baseline is None
    first, step = train_one_epoch(stage, loader, cfg.train, 0, 40, progress=False)
    baseline = stage.baseline
    assert baseline is not None and baseline < 0  # a mean log-likelihood
    for _ in range(4):
        last, step = train_one_epoch(stage, loader, cfg.train, step, 40, progress=False)
    assert last["ce"] < first["ce"] and stage.baseline != baseline
    soft = CrossEntropy(build_model(tiny_config, len(vocab)), opt, cfg.train,
                        torch.device("cpu"), vocab.pad_id)
    assert not soft.hard


def test_adaptive_attention_reports_beta_per_word(tiny_config):
    """An adaptive checkpoint captions with the sentinel's weight per word: 1 - the sum of the
    word's map, in the result and in `caption --out` JSON."""
    import captionkit
    from captionkit.cli import main

    cfg = tiny_config.override(["decoder.attention=adaptive", "train.epochs=3", "train.lr=3e-3"])
    ckpt = fit(cfg, progress=False).best_checkpoint
    captioner = captionkit.load(ckpt, precision="fp32")
    image = by_split(load_records(cfg.data), "dev")[0].image
    res = captioner.caption(image)
    assert res.beta is not None and len(res.beta) == len(res.words) > 0
    for b, att in zip(res.beta, res.attention, strict=True):
        assert 0 <= b <= 1 and abs(b - (1 - att.sum())) < 1e-5
    out = Path(cfg.train.out_dir) / "caps.jsonl"
    assert main(["caption", str(image), "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[0])
    assert len(row["beta"]) == len(row["caption"].split())
    other = f"train.out_dir={Path(cfg.train.out_dir).parent / 'additive_run'}"
    additive = captionkit.load(fit(tiny_config.override(["train.max_steps=1", other]),
                                   progress=False).best_checkpoint)
    assert additive.caption(image).beta is None


PRODUCT = [(d, a) for d in ("lstm", "gru", "updown")
           for a in ("additive", "general", "scaled_dot", "aoa", "adaptive", "hard")]


@pytest.mark.parametrize("decoder,attention", PRODUCT)
def test_every_decoder_and_mechanism_trains_saves_scst_and_captions(tiny_config, tmp_path,
                                                                    decoder, attention):
    """The registry product end to end: cross-entropy steps, the checkpoint (mechanism in
    meta.json), an SCST step from it, and a caption with per-word maps from the API."""
    import captionkit

    base = tiny_config.override([f"decoder.name={decoder}", f"decoder.attention={attention}",
                                 "decoder.num_heads=2", "train.max_steps=2"])
    xe = fit(base, progress=False)
    meta = json.loads((xe.best_checkpoint / "meta.json").read_text())
    assert (meta["config"]["decoder"]["name"], meta["config"]["decoder"]["attention"]) == (
        decoder, attention)
    scst = fit(base.override(["train.stage=scst", f"train.init={xe.best_checkpoint}",
                              "train.scst_samples=2", "train.max_steps=1",
                              f"train.out_dir={tmp_path / 'scst'}"]), progress=False)
    assert scst.history[0]["step"] == 1 and math.isfinite(scst.history[0]["loss"])
    captioner = captionkit.load(scst.best_checkpoint, precision="fp32")
    res = captioner.caption(by_split(load_records(base.data), "dev")[0].image, max_len=4)
    assert res.attention.shape == (len(res.words), *captioner.grid)
    assert (res.beta is not None) == (attention == "adaptive")


def test_a_run_folder_that_holds_a_run_is_refused_unless_overwrite(tiny_config, tmp_path):
    from captionkit.errors import CaptionKitError

    cfg = tiny_config.override(["train.max_steps=1"])
    run = Path(cfg.train.out_dir)
    fit(cfg, progress=False)
    before = (run / "metrics.jsonl").read_text()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(CaptionKitError, match="not empty.*--resume.*--overwrite"):
        fit(cfg, progress=False)
    assert (run / "metrics.jsonl").read_text() == before  # nothing was touched
    stale = run / "resume-000009999"
    stale.mkdir()
    fit(cfg, progress=False, overwrite=True)
    assert not stale.exists() and (run / "best" / "model.safetensors").is_file()
    assert (run / "notes.txt").read_text() == "mine"  # only a run's own files are replaced


def test_a_failed_start_writes_nothing(tiny_config, tmp_path):
    from captionkit.errors import CaptionKitError

    cfg = tiny_config.override([f"data.feature_cache={tmp_path / 'no_cache'}",
                                "encoder.trainable=false"])
    with pytest.raises(CaptionKitError, match="no complete feature cache"):
        fit(cfg, progress=False)
    assert not Path(cfg.train.out_dir).exists()  # no folder holding only config.yaml

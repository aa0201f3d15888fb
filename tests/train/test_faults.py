"""Fault injection: SIGKILL at 10 points across feature extraction and training (a fixed,
seeded list: between extraction batches, between the features write and their done-marks, after
a resume point is written, and while one is being written). Each killed run is simply started
again; the last one finishes, and the cache and the final weights are bitwise-identical to an
uninterrupted run. Truncated checkpoints, resume points and caches are refused, never loaded."""

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from captionkit.checkpoint import load_checkpoint
from captionkit.data.features import FeatureStore
from captionkit.errors import CaptionKitError, CheckpointError

SRC = str(Path(__file__).resolve().parents[2] / "src")
pytestmark = pytest.mark.timeout(600)

PIPELINE = textwrap.dedent("""
    import os, signal, sys
    from dataclasses import replace
    from pathlib import Path
    import numpy as np, torch
    torch.set_num_threads(1)
    from captionkit.train import fit as engine, loop, resume
    from captionkit.config import load_config
    from captionkit.data import features, load_records
    from captionkit.models.encoders import build_encoder
    cfg, cache = load_config(sys.argv[1]), Path(sys.argv[2])
    phase, at = sys.argv[3], int(sys.argv[4])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    armed = [False]
    real_fast, real_flush = features.fast_inference, np.memmap.flush
    def fast(encoder, batch_size, device="cpu"):
        run = real_fast(encoder, batch_size, device)
        done = cache / features.DONE
        seen = [int(np.fromfile(done, np.uint8).sum()) if done.exists() else 0]
        def counted(images):
            out = run(images)
            seen[0] += len(images)
            if phase == "extract" and seen[0] >= at:
                die()  # between batches: this one is never written
            armed[0] = phase == "extract-mid-write" and seen[0] >= at
            return out
        return counted
    def flush(self):
        real_flush(self)
        if armed[0] and self.dtype == np.float16:
            die()  # features on disk, not yet marked done
    features.fast_inference, np.memmap.flush = fast, flush
    real_save, real_replace = resume.save_resume, os.replace
    def save(run_dir, model, opt, progress, fp):
        if phase == "train-mid-save" and progress.step == at:
            def replace_(src, dst):
                if str(dst).endswith("resume.json"):
                    die()  # the new resume point is complete, the pointer not yet switched
                real_replace(src, dst)
            resume.os.replace = replace_
        out = real_save(run_dir, model, opt, progress, fp)
        if phase == "train-after-save" and progress.step == at:
            die()
        return out
    loop.save_resume = save
    records = load_records(cfg.data)
    torch.manual_seed(cfg.train.seed)  # the same initial encoder as fit() builds
    enc = build_encoder(replace(cfg.encoder, trainable=False))
    features.extract_features(records, enc, cache, batch_size=4, num_workers=0,
                              progress=False)
    run_dir = Path(cfg.train.out_dir)
    engine.fit(cfg, progress=False, resume=resume.has_resume(run_dir))
""")


def kill_points(seed: int = 20261126) -> list[tuple[str, int]]:
    """10 points in pipeline order: 4 in extraction (48 images, batches of 4), 6 in training
    (2 epochs x 4 steps, a resume point after every step)."""
    rng = random.Random(seed)
    extract = sorted(rng.sample(range(4, 45, 4), 4))
    train = sorted(rng.sample(range(1, 9), 6))
    return ([(("extract", "extract-mid-write")[i % 2], n) for i, n in enumerate(extract)]
            + [(("train-after-save", "train-mid-save")[i % 2], s) for i, s in enumerate(train)])


def _run(cfg_path: Path, cache: Path, phase: str = "none", at: int = 0):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", PIPELINE, str(cfg_path), str(cache), phase,
                           str(at)], env=env, capture_output=True, timeout=300)


def _setup(tiny_config, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "cache"
    cfg = tiny_config.override(["encoder.trainable=false", "train.epochs=2",
                                "train.checkpoint_every=1", "decoder.dropout=0.3",
                                f"data.feature_cache={cache}", f"train.out_dir={folder / 'run'}"])
    cfg.save(folder / "cfg.yaml")
    return folder / "cfg.yaml", cache


def test_ten_kills_across_extraction_and_training(tiny_config, tmp_path):
    ref_cfg, ref_cache = _setup(tiny_config, tmp_path / "ref")
    done = _run(ref_cfg, ref_cache)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    cfg, cache = _setup(tiny_config, tmp_path / "killed")
    points = kill_points()
    assert len(points) == 10
    for phase, at in points:
        child = _run(cfg, cache, phase, at)
        assert child.returncode == -signal.SIGKILL, (phase, at, child.stderr.decode()[-2000:])
    last = _run(cfg, cache)
    assert last.returncode == 0, last.stderr.decode()[-2000:]
    a = np.fromfile(ref_cache / "features.f16", np.float16)
    b = np.fromfile(cache / "features.f16", np.float16)
    assert np.array_equal(a, b)
    wa = load_file(str(tmp_path / "ref" / "run" / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "run" / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_truncated_files_are_refused(tiny_config, tmp_path):
    cfg_path, cache = _setup(tiny_config, tmp_path)
    assert _run(cfg_path, cache).returncode == 0
    feats = cache / "features.f16"
    good = feats.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    feats.write_bytes(bytes(flipped))
    with pytest.raises(CaptionKitError, match="checksum mismatch"):
        FeatureStore(cache)
    feats.write_bytes(good[:-100])
    with pytest.raises(CaptionKitError, match="feature file is"):
        FeatureStore(cache)
    index = cache / "index.json"
    index.write_text(index.read_text()[:50])
    with pytest.raises(CaptionKitError, match="unreadable cache index"):
        FeatureStore(cache)
    ckpt = tmp_path / "run" / "last"
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(ckpt)
    from captionkit.train.resume import load_resume

    point = next((tmp_path / "run").glob("resume-*"))
    (point / "optimizer.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CaptionKitError, match="unreadable resume point"):
        load_resume(tmp_path / "run", None, None, {})

"""Data parallelism: 2 CPU processes (gloo) compute what one process computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captionkit.data.dataset import LengthBucketSampler
from captionkit.train.distributed import Dist, resolve_device, setup
from captionkit.train.fit import fit

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_resolve_device_and_single_process_setup(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d, device = setup("cpu")
    assert d == Dist() and not d.active and d.main and device.type == "cpu"


def test_sampler_slices_the_same_global_batches():
    lengths = [float(i % 17) for i in range(50)]
    full = LengthBucketSampler(lengths, 8, seed=1)
    parts = []
    for rank in range(2):
        s = LengthBucketSampler(lengths, 8, seed=1)
        s.rank, s.world = rank, 2
        parts.append(list(s))
    for glob, a, b in zip(full, *parts, strict=True):
        assert sorted(a + b) == sorted(glob) and abs(len(a) - len(b)) <= 1


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tiny_config, tmp_path):
    # frozen encoder: its BatchNorm uses running statistics, so a half batch per process sees
    # exactly what the whole batch sees in one process
    common = ["train.epochs=1", "train.max_steps=3", "decoder.dropout=0.0",
              "train.batch_size=8", "encoder.trainable=false"]
    single = fit(tiny_config.override([*common, f"train.out_dir={tmp_path / 'one'}"]),
                 progress=False)
    cfg = tiny_config.override([*common, f"train.out_dir={tmp_path / 'two'}"])
    cfg.save(tmp_path / "cfg.yaml")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "captionkit", "train", "--config",
                           str(tmp_path / "cfg.yaml"), "--quiet"],
                          env=env, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().count("best checkpoint: ") == 1  # rank 0 only, not per rank
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert rows[0]["step"] == single.history[0]["step"] == 3
    assert rows[0]["loss"] == pytest.approx(single.history[0]["loss"], rel=1e-4)


def test_a_cuda_device_on_a_machine_without_one_is_one_clear_line(monkeypatch):
    from captionkit.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA device.*train.device=cpu"):
            resolve_device(name)
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"

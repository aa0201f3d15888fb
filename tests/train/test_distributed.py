"""Data parallelism: 2 CPU processes (gloo), on one machine or as 2 "nodes" on loopback,
compute what one process computes."""

from __future__ import annotations

import json
import os
import signal
import socket
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


def _single_and_split(tiny_config, tmp_path):
    """One process's run of 3 steps, and the same config for a distributed run into
    ``tmp_path/two`` saved as ``tmp_path/cfg.yaml``.

    The encoder is frozen: its BatchNorm uses running statistics, so a half batch per process
    sees exactly what the whole batch sees in one process."""
    common = ["train.epochs=1", "train.max_steps=3", "decoder.dropout=0.0",
              "train.batch_size=8", "encoder.trainable=false"]
    single = fit(tiny_config.override([*common, f"train.out_dir={tmp_path / 'one'}"]),
                 progress=False)
    cfg = tiny_config.override([*common, f"train.out_dir={tmp_path / 'two'}"])
    cfg.save(tmp_path / "cfg.yaml")
    return single, tmp_path / "cfg.yaml"


def _torchrun(launch: list[str], cfg_path: Path) -> list[str]:
    """``python -m torch.distributed.run LAUNCH -m captionkit train --config CFG``."""
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "captionkit",
            "train", "--config", str(cfg_path), "--quiet"]


def _assert_same_first_loss(run_dir: Path, single) -> None:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == single.history[0]["step"] == 3
    assert rows[0]["loss"] == pytest.approx(single.history[0]["loss"], rel=1e-4)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tiny_config, tmp_path):
    single, cfg_path = _single_and_split(tiny_config, tmp_path)
    proc = subprocess.run(_torchrun(["--standalone", "--nproc_per_node", "2"], cfg_path),
                          env=_env(), capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().count("best checkpoint: ") == 1  # rank 0 only, not per rank
    _assert_same_first_loss(tmp_path / "two", single)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_match_one_process(tiny_config, tmp_path):
    # two "machines" on loopback, as the README's multi-node command starts them: static
    # rendezvous at node 0's address, one torchrun per node, started independently
    single, cfg_path = _single_and_split(tiny_config, tmp_path)
    port, nodes, logs = str(_free_port()), [], [tmp_path / f"node{r}.log" for r in (0, 1)]
    try:
        for rank, log in enumerate(logs):  # files, not pipes: a full pipe would stall a node
            with open(log, "wb") as f:
                nodes.append(subprocess.Popen(
                    _torchrun(["--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node",
                               "1", "--master-addr", "127.0.0.1", "--master-port", port],
                              cfg_path), env=_env(), stdout=f, stderr=subprocess.STDOUT,
                    start_new_session=True))  # its own group: torchrun and its worker
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node in nodes:  # a hung rendezvous must not outlive the test
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    outs = [log.read_text(errors="replace") for log in logs]
    for rank, (code, out) in enumerate(zip(codes, outs, strict=True)):
        assert code == 0, f"node {rank}:\n{out[-3000:]}"
    # global rank 0 (on node 0) reports and writes; node 1's process stays quiet
    assert [out.count("best checkpoint: ") for out in outs] == [1, 0]
    _assert_same_first_loss(tmp_path / "two", single)


def test_a_cuda_device_on_a_machine_without_one_is_one_clear_line(monkeypatch):
    from captionkit.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA device.*train.device=cpu"):
            resolve_device(name)
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"

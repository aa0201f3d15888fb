"""Tiny CPU fixtures shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captionkit.config import Config
from captionkit.data.shapes import generate_shapes

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A tiny generated shapes dataset: 32 train, 8 dev, 8 test images."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=32, num_dev=8, num_test=8, seed=1)
    return root


@pytest.fixture()
def tiny_config(shapes_root, tmp_path) -> Config:
    """The demo config shrunk to seconds of CPU work on the tiny shapes dataset."""
    return Config().override([
        f"data.root={shapes_root}", "data.num_train=32", "data.num_dev=8", "data.num_test=8",
        "data.seed=1", "decoder.embed_dim=16", "decoder.hidden_dim=32",
        "decoder.attention_dim=16", "train.epochs=1", "train.batch_size=8",
        f"train.out_dir={tmp_path / 'run'}", "train.eval_max_len=8",
    ])


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, shapes_root) -> Path:
    """A checkpoint trained for a few steps on the tiny shapes dataset."""
    from captionkit.train.fit import fit

    out = tmp_path_factory.mktemp("ckpt_run")
    cfg = Config().override([
        f"data.root={shapes_root}", "data.num_train=32", "data.num_dev=8", "data.num_test=8",
        "data.seed=1", "decoder.embed_dim=16", "decoder.hidden_dim=32",
        "decoder.attention_dim=16", "train.epochs=2", "train.batch_size=8",
        f"train.out_dir={out}", "train.eval_max_len=8",
    ])
    return fit(cfg, progress=False).best_checkpoint


@pytest.fixture(scope="session")
def random_checkpoint(shapes_root, tmp_path_factory) -> Path:
    """An untrained tiny model: its captions are nonsense but never empty."""
    from captionkit.checkpoint import save_checkpoint
    from captionkit.data import load_records
    from captionkit.data.vocab import Vocabulary
    from captionkit.models.captioner import build_model

    torch.manual_seed(0)
    cfg = Config().override([f"data.root={shapes_root}", "decoder.embed_dim=16",
                             "decoder.hidden_dim=32", "decoder.attention_dim=16"])
    vocab = Vocabulary.build(c for r in load_records(cfg.data) for c in r.captions)
    path = tmp_path_factory.mktemp("serve") / "ckpt"
    return save_checkpoint(path, build_model(cfg, len(vocab)), cfg, vocab)

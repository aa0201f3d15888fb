"""Where the decoder-training time goes: torch.profiler over a few training steps.

    python benchmarks/profile_train.py [--config configs/flickr8k_lite0_lstm.yaml] [--amp 0|1]

Random 7x7x1280 features (Lite0-shaped) and synthetic 8-16-word captions, batch of 64 images
(320 captions), the preset's decoder; prints the operators with the most self CPU time and the
share of the recurrent loop, the output layer and the optimizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from captionkit.config import load_config
from captionkit.data.dataset import Batch
from captionkit.models.captioner import build_model
from captionkit.train.loop import train_one_epoch
from captionkit.train.optim import build_optimizer
from captionkit.train.stages import CrossEntropy

ROOT = Path(__file__).resolve().parents[1]


def batches(n: int, images: int, vocab: int, n_loc: int, dim: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        lengths = torch.randint(10, 19, (images * 5,), generator=g)  # <start> + words + <end>
        tokens = torch.zeros(images * 5, int(lengths.max()), dtype=torch.long)
        for i, n_tok in enumerate(lengths.tolist()):
            tokens[i, :n_tok] = torch.randint(4, vocab, (n_tok,), generator=g)
            tokens[i, 0], tokens[i, n_tok - 1] = 1, 2
        out.append(Batch(None, torch.randn(images, n_loc, dim, generator=g), tokens,
                         torch.arange(images).repeat_interleave(5), torch.arange(images)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/flickr8k_lite0_lstm.yaml"))
    ap.add_argument("--amp", type=int, choices=[0, 1], help="override train.amp")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    over = [] if args.amp is None else [f"train.amp={bool(args.amp)}"]
    cfg = load_config(args.config, over)
    vocab = 2600
    model = build_model(cfg, vocab, pretrained=False)
    enc = model.encoder
    data = batches(args.steps, cfg.train.batch_size, vocab, enc.grid[0] * enc.grid[1],
                   enc.out_dim)
    opt = build_optimizer(model, cfg.train)
    dev = torch.device("cpu")
    stage = CrossEntropy(model, opt, cfg.train, dev)
    train_one_epoch(stage, data[:1], cfg.train, 0, 100, progress=False)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_one_epoch(stage, data, cfg.train, 0, 100, progress=False)
    print(f"{cfg.decoder.name} {cfg.decoder.hidden_dim}-d, amp={cfg.train.amp}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps of {5 * cfg.train.batch_size}"
          " captions")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()

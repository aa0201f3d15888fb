"""CPU threads on a busy machine: captionkit's default against PyTorch's and one thread.

    python benchmarks/threads.py                 # idle and busy, 3 repeats each
    python benchmarks/threads.py --repeats 1 --steps 2 --images 10   # seconds

The workload is what ``captionkit train`` and ``evaluate`` do on the CPU, at the Lite0 + LSTM
preset's size (``configs/flickr8k_lite0_lstm.yaml``, random 7x7x320 grid features, so no data
is needed): ``--steps`` cross-entropy training steps of batch 32, then beam-3 decoding of
``--images`` images. Each setting runs in a fresh process (the OpenMP wait policy is read when
torch loads):

- ``torch default``: PyTorch's thread count, spinning waits (what a plain script gets);
- ``captionkit default``: :func:`captionkit.threads.default_threads` with passive waiting,
  what every ``captionkit`` command now does;
- ``1 thread``: ``OMP_NUM_THREADS=1``.

"busy" runs each beside a second job: another process multiplying matrices with PyTorch's
defaults for the whole measurement. Reports the median seconds of ``--repeats`` runs and each
setting's time over one thread's in the same condition. Ends with ``busy_default_vs_1thread=``,
``busy_torch_default_vs_1thread=`` and ``idle_default_vs_1thread=`` (lower is better; 1.0 =
as fast as one thread).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "flickr8k_lite0_lstm.yaml"
SETTINGS = {  # name -> environment changes
    "torch default": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None, "CK_THREADS": "torch"},
    "captionkit default": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": None,
                           "CK_THREADS": "captionkit"},
    "1 thread": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": "1", "CK_THREADS": "torch"},
}
COMPETITOR = """
import torch
a = torch.randn(768, 768)
while True:
    a = torch.tanh(a @ a / 768)
"""


def worker(steps: int, images: int) -> float:
    """The timed workload (run in a child process): seconds for training steps + decoding."""
    import torch

    from captionkit.config import load_config
    from captionkit.data.vocab import Vocabulary
    from captionkit.infer.decoding import beam_search
    from captionkit.models.captioner import build_model
    from captionkit.threads import configure_threads

    if os.environ.get("CK_THREADS") == "captionkit":
        configure_threads()
    torch.manual_seed(0)
    cfg = load_config(str(PRESET), ["encoder.pretrained=false"])
    vocab = Vocabulary.build([" ".join(f"w{i}" for i in range(2500))], 1, cfg.data.max_len)
    model = build_model(cfg, len(vocab))
    feats = torch.randn(32, 49, model.encoder.out_dim)  # (B, N, D)
    tokens = torch.randint(4, len(vocab), (32, 16))  # (B, T)
    opt = torch.optim.Adam(model.decoder.parameters(), 1e-4)
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, _ = model.decoder(feats, tokens[:, :-1])  # (B, T-1, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        beam_search(model.decoder, feats[:images], start_id=vocab.start_id,
                    end_id=vocab.end_id, beam_size=3, max_len=16)
    return time.perf_counter() - t0


def run_setting(name: str, args) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for key, value in SETTINGS[name].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(args.steps),
                          "--images", str(args.images)], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(args, busy: bool) -> dict[str, float]:
    """Median seconds of each setting, optionally beside the competitor process."""
    competitor = None
    if busy:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                                  "OMP_WAIT_POLICY")}
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
        time.sleep(2.0)  # let it load torch and start multiplying
    try:
        times = {name: [] for name in SETTINGS}
        for _ in range(args.repeats):  # interleaved: drift hits every setting alike
            for name in SETTINGS:
                times[name].append(run_setting(name, args))
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=6, help="training steps per run")
    ap.add_argument("--images", type=int, default=50, help="images decoded per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    args = ap.parse_args()
    if args.worker:
        print(f"{worker(args.steps, args.images):.4f}")
        return
    from captionkit.threads import available_cpus

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{available_cpus()} usable; {args.steps} train steps (batch 32) + beam-3 decoding "
          f"of {args.images} images; median of {args.repeats}")
    rows = {"idle": measure(args, busy=False), "busy": measure(args, busy=True)}
    print(f"\n| {'machine':<5} | {'setting':<18} | {'seconds':>8} | {'vs 1 thread':>11} |")
    print(f"|{'-' * 7}|{'-' * 20}|{'-' * 10}|{'-' * 13}|")
    for cond, times in rows.items():
        for name, sec in times.items():
            print(f"| {cond:<5} | {name:<18} | {sec:8.2f} | {sec / times['1 thread']:10.2f}x |")
    print(f"\nbusy_default_vs_1thread="
          f"{rows['busy']['captionkit default'] / rows['busy']['1 thread']:.2f}")
    print(f"busy_torch_default_vs_1thread="
          f"{rows['busy']['torch default'] / rows['busy']['1 thread']:.2f}")
    print(f"idle_default_vs_1thread="
          f"{rows['idle']['captionkit default'] / rows['idle']['1 thread']:.2f}")


if __name__ == "__main__":
    main()

"""Quality with and without the fast training step: the same preset, seed and data, trained
once with ``train.fast_path=never`` and once with ``always``, for each seed; dev BLEU-4 /
CIDEr-D (greedy, the run's own validation) and seconds per run.

    python benchmarks/fastpath_quality.py --data-dir ../shared/flickr8k --epochs 3 --seeds 0,1,2

The two paths draw different dropout masks (the fast step lays captions out by image and
time), so one seed's difference is partly noise: the spread over seeds of the reference path
is the yardstick. Needs the Lite0 feature cache of the preset (``captionkit
extract-features``). Ends with ``bleu4_never=``, ``bleu4_always=`` (means over seeds),
``bleu4_diff=`` and ``bleu4_never_range=`` (max - min over seeds) lines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from captionkit.config import load_config
from captionkit.engine import fit

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs/flickr8k_lite0_lstm.yaml"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="runs/bench_fastpath_quality")
    ap.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    args = ap.parse_args()
    rows = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        for mode in ("never", "always"):
            cfg = load_config(args.config, [
                f"data.root={args.data_dir}", f"train.epochs={args.epochs}",
                f"train.fast_path={mode}", f"train.seed={seed}",
                f"train.out_dir={args.out}/{mode}_seed{seed}"])
            t0 = time.perf_counter()
            last = fit(cfg, progress=False).history[-1]
            rows.append((seed, mode, last["BLEU-4"], last["CIDEr-D"], last["loss"],
                         time.perf_counter() - t0))
    print(f"\n{'seed':>4} {'fast_path':<10} {'dev BLEU-4':>10} {'CIDEr-D':>8} {'last loss':>9} "
          f"{'seconds':>8}")
    for seed, mode, b, c, loss, sec in rows:
        print(f"{seed:>4} {mode:<10} {b:>10.4f} {c:>8.3f} {loss:>9.3f} {sec:>8.0f}")
    bleu = {m: [r[2] for r in rows if r[1] == m] for m in ("never", "always")}
    mean = {m: statistics.mean(v) for m, v in bleu.items()}
    print(f"bleu4_never={mean['never']:.4f}")
    print(f"bleu4_always={mean['always']:.4f}")
    print(f"bleu4_diff={mean['always'] - mean['never']:.4f}")
    print(f"bleu4_never_range={max(bleu['never']) - min(bleu['never']):.4f}")


if __name__ == "__main__":
    main()

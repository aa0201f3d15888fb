"""Quality with and without the fast training step: the same preset, seed and data, trained
once with ``train.fast_path=never`` and once with ``always``, for each seed; dev BLEU-4 /
CIDEr-D (greedy, the run's own validation) and seconds per run.

    python benchmarks/fastpath_quality.py --data-dir ../shared/flickr8k --epochs 3 --seeds 0,1,2
    python benchmarks/fastpath_quality.py ... --modes always --fast-overrides train.fast_hoist_images=64

The two paths draw different dropout masks (the fast step lays captions out by image and
time), so one seed's difference is partly noise: the spread over seeds of the reference path
is the yardstick. Needs the Lite0 feature cache of the preset (``captionkit
extract-features``). Ends with ``bleu4_never=``, ``bleu4_always=`` (means over seeds),
``bleu4_diff=`` and ``bleu4_never_range=`` (max - min over seeds) lines (those of the modes
run). ``--fast-overrides`` change the fast runs only (e.g. the hoisted context product).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from captionkit.config import load_config
from captionkit.train.fit import fit

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs/flickr8k_lite0_lstm.yaml"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="runs/bench_fastpath_quality")
    ap.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    ap.add_argument("--modes", default="never,always", help="train.fast_path values to run")
    ap.add_argument("--fast-overrides", default="",
                    help="comma-separated overrides of the fast runs, e.g. "
                         "train.fast_hoist_images=64 (the context product hoisted)")
    args = ap.parse_args()
    extra = [o for o in args.fast_overrides.split(",") if o]
    modes = args.modes.split(",")
    rows = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        for mode in modes:
            cfg = load_config(args.config, [
                f"data.root={args.data_dir}", f"train.epochs={args.epochs}",
                f"train.fast_path={mode}", f"train.seed={seed}",
                f"train.out_dir={args.out}/{mode}_seed{seed}",
                *(extra if mode == "always" else [])])
            t0 = time.perf_counter()
            last = fit(cfg, progress=False, overwrite=True).history[-1]
            rows.append((seed, mode, last["BLEU-4"], last["CIDEr-D"], last["loss"],
                         time.perf_counter() - t0))
    print(f"\n{'seed':>4} {'fast_path':<10} {'dev BLEU-4':>10} {'CIDEr-D':>8} {'last loss':>9} "
          f"{'seconds':>8}")
    for seed, mode, b, c, loss, sec in rows:
        print(f"{seed:>4} {mode:<10} {b:>10.4f} {c:>8.3f} {loss:>9.3f} {sec:>8.0f}")
    bleu = {m: [r[2] for r in rows if r[1] == m] for m in modes}
    mean = {m: statistics.mean(v) for m, v in bleu.items()}
    for m in modes:
        print(f"bleu4_{m}={mean[m]:.4f}")
    if len(modes) == 2:
        print(f"bleu4_diff={mean['always'] - mean['never']:.4f}")
    if "never" in modes:
        print(f"bleu4_never_range={max(bleu['never']) - min(bleu['never']):.4f}")


if __name__ == "__main__":
    main()

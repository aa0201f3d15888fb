"""Quality with and without the fast training step: the same preset, seed and data, trained
once with ``train.fast_path=never`` and once with ``always``; dev BLEU-4 / CIDEr-D (greedy, the
run's own validation) and seconds per run.

    python benchmarks/fastpath_quality.py --data-dir ../shared/flickr8k --epochs 3

Needs the Lite0 feature cache of the preset (``captionkit extract-features``). Ends with
``bleu4_never=``, ``bleu4_always=`` and ``bleu4_diff=`` lines.
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    rows = {}
    for mode in ("never", "always"):
        cfg = load_config(args.config, [f"data.root={args.data_dir}", f"train.epochs={args.epochs}",
                                        f"train.fast_path={mode}",
                                        f"train.out_dir={args.out}/{mode}"])
        t0 = time.perf_counter()
        result = fit(cfg, progress=False)
        last = result.history[-1]
        rows[mode] = (last["BLEU-4"], last["CIDEr-D"], last["loss"], time.perf_counter() - t0)
    print(f"\n{'fast_path':<10} {'dev BLEU-4':>10} {'CIDEr-D':>8} {'last loss':>9} {'seconds':>8}")
    for mode, (b, c, loss, sec) in rows.items():
        print(f"{mode:<10} {b:>10.3f} {c:>8.3f} {loss:>9.3f} {sec:>8.0f}")
    print(f"bleu4_never={rows['never'][0]:.4f}")
    print(f"bleu4_always={rows['always'][0]:.4f}")
    print(f"bleu4_diff={rows['always'][0] - rows['never'][0]:.4f}")


if __name__ == "__main__":
    main()

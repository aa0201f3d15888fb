"""Seeds and ensembles: each row's checkpoints scored alone (mean and spread over seeds) and,
with ``--ensemble``, together as one decode-time ensemble (issue 20's error bars and
ensemble ingredient).

    python benchmarks/seed_ensemble.py --data-dir ../shared/flickr8k \\
        --feature-cache runs/cache/flickr8k_lite0 --beam 3 --ensemble --out runs/seeds \\
        --row gru:scaled_dot=runs/a/best,runs/b/best,runs/c/best \\
        --row lstm:additive=runs/d/best,runs/e/best,runs/f/best

A row is ``LABEL=CHECKPOINT[,CHECKPOINT...]``: the same recipe trained with different seeds.
Every checkpoint is evaluated with :func:`captionkit.infer.evaluation.evaluate_checkpoint` (the
code behind ``captionkit evaluate``) on ``--split`` at ``--beam``; the row's ensemble is the
same call with all of its checkpoints (beam search over the mean of their log-probabilities).
Scores are kept under ``--out/<label>/`` and read back on a rerun unless ``--rescore``.

Spread is the sample standard deviation (n-1) and the range (max - min) over the row's seeds.
A row after the first is compared with the first: the difference of the means counts as a gain
only when it is larger than the larger of the two rows' ranges (a gain inside the spread
between seeds is not a gain).

Ends with ``<label>_<metric>_mean=``, ``<label>_<metric>_sd=`` lines (metrics ``bleu4``,
``meteor``, ``rouge_l``, ``cider_d``; the label with ``:`` and ``+`` as ``_``), then
``<label>_ensemble_<metric>=`` lines for the ensembles.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from captionkit.infer.evaluation import DecodeSettings, evaluate_checkpoint

METRICS = {"BLEU-4": "bleu4", "METEOR": "meteor", "ROUGE-L": "rouge_l", "CIDEr-D": "cider_d"}


def seed_stats(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and range of a row's seeds."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": statistics.fmean(values), "sd": sd,
            "min": min(values), "max": max(values), "range": max(values) - min(values)}


def gain_beyond_spread(base: dict, other: dict) -> tuple[float, bool]:
    """``other``'s mean minus ``base``'s, and whether it exceeds the larger of their ranges."""
    diff = other["mean"] - base["mean"]
    return diff, abs(diff) > max(base["range"], other["range"])


def parse_row(text: str) -> tuple[str, list[str]]:
    """``LABEL=A,B,C`` -> (label, [A, B, C]); refuses a row without a label or checkpoints."""
    label, sep, paths = text.partition("=")
    checkpoints = [p for p in paths.split(",") if p]
    if not sep or not label or not checkpoints:
        raise SystemExit(f"--row {text!r}: expected LABEL=CHECKPOINT[,CHECKPOINT...]")
    return label, checkpoints


def slug(label: str) -> str:
    """A label as a key-line prefix: ``gru:scaled_dot`` -> ``gru_scaled_dot``."""
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


def scores(checkpoints: list[str], out: Path, args: argparse.Namespace) -> dict:
    """The metrics record of one checkpoint, or of several as an ensemble; kept in ``out``."""
    kept = out / "metrics.json"
    if kept.exists() and not args.rescore:
        record = json.loads(kept.read_text())
        if (record.get("checkpoint"), record.get("split"), record["decode"].get("beam")) \
                == (" + ".join(checkpoints), args.split, args.beam):
            return record
    return evaluate_checkpoint(checkpoints, data_dir=args.data_dir, split=args.split,
                               settings=DecodeSettings(beam=args.beam),
                               feature_cache=args.feature_cache, out=out, progress=False)


def measure_row(label: str, checkpoints: list[str], args: argparse.Namespace) -> dict:
    """Score each seed of a row, their statistics per metric, and (``--ensemble``) the
    ensemble of all of them."""
    out = Path(args.out) / slug(label)
    seeds = [scores([c], out / f"seed{i}", args) for i, c in enumerate(checkpoints)]
    row = {"label": label, "checkpoints": checkpoints,
           "seeds": [s["scores"] for s in seeds],
           "seconds": [s["seconds"] for s in seeds],
           "stats": {m: seed_stats([s["scores"][m] for s in seeds]) for m in METRICS}}
    if args.ensemble and len(checkpoints) > 1:
        ens = scores(checkpoints, out / "ensemble", args)
        row["ensemble"], row["ensemble_seconds"] = ens["scores"], ens["seconds"]
    return row


def print_table(rows: list[dict]) -> None:
    """A markdown table: each run (one seed each), the mean +- sd [min-max], the ensemble, and the gain
    of each row's mean over the first row's."""
    print("| row | " + " | ".join(METRICS) + " | eval s |")
    print("|---|" + "---|" * (len(METRICS) + 1))
    for row in rows:
        for i, (s, sec) in enumerate(zip(row["seeds"], row["seconds"], strict=True)):
            print(f"| {row['label']} run {i} | "
                  + " | ".join(f"{s[m]:.3f}" for m in METRICS) + f" | {sec:.0f} |")
        st = row["stats"]
        print(f"| **{row['label']} mean +- sd [min-max], n={st['CIDEr-D']['n']}** | "
              + " | ".join(f"{st[m]['mean']:.3f} +- {st[m]['sd']:.3f} "
                           f"[{st[m]['min']:.3f}-{st[m]['max']:.3f}]" for m in METRICS) + " | |")
        if "ensemble" in row:
            print(f"| {row['label']} ensemble of {len(row['seeds'])} | "
                  + " | ".join(f"{row['ensemble'][m]:.3f}" for m in METRICS)
                  + f" | {row['ensemble_seconds']:.0f} |")
    for row in rows[1:]:
        diff, beyond = gain_beyond_spread(rows[0]["stats"]["CIDEr-D"], row["stats"]["CIDEr-D"])
        print(f"\n{row['label']} against {rows[0]['label']}: CIDEr-D mean {diff:+.3f}, "
              + ("beyond" if beyond else "inside") + " the larger of the two rows' seed ranges")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--row", action="append", required=True, metavar="LABEL=CKPT[,CKPT...]")
    ap.add_argument("--data-dir", default=None, help="dataset folder (default: the config's)")
    ap.add_argument("--feature-cache", default=None)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--beam", type=int, default=3)
    ap.add_argument("--ensemble", action="store_true", help="also score each row's ensemble")
    ap.add_argument("--rescore", action="store_true", help="evaluate again, ignoring kept scores")
    ap.add_argument("--out", default="runs/seed_ensemble")
    args = ap.parse_args()
    rows = [measure_row(*parse_row(text), args) for text in args.row]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "seed_ensemble.json").write_text(json.dumps(rows, indent=1))
    print_table(rows)
    print()
    for row in rows:
        for m, key in METRICS.items():
            print(f"{slug(row['label'])}_{key}_mean={row['stats'][m]['mean']:.4f}")
            print(f"{slug(row['label'])}_{key}_sd={row['stats'][m]['sd']:.4f}")
    for row in (r for r in rows if "ensemble" in r):
        for m, key in METRICS.items():
            print(f"{slug(row['label'])}_ensemble_{key}={row['ensemble'][m]:.4f}")


if __name__ == "__main__":
    main()

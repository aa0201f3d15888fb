"""A Markdown results table from ``captionkit evaluate`` metrics files.

    python benchmarks/results_table.py runs/eval/*/metrics.json

One row per metrics.json (decoder, beam, images), one column per metric; metrics that could not
run are shown as "n/a" with the reasons listed under the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE"]


def table(records: list[dict]) -> str:
    head = ["model", "split", "beam", "images", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reasons: dict[str, str] = {}
    for r in records:
        stage = f" ({r['stage']})" if r.get("stage") else ""
        cells = [f"{r['encoder']} + {r['decoder']}{stage}", r["split"], str(r["decode"]["beam"]),
                 str(r["images"])]
        for c in COLUMNS:
            if c in r["scores"]:
                cells.append(f"{r['scores'][c]:.3f}")
            else:
                cells.append("n/a")
                if c in r.get("unavailable", {}):
                    reasons[c] = r["unavailable"][c]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\n{name} n/a: {why}" for name, why in reasons.items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", nargs="+", help="metrics.json files")
    args = ap.parse_args()
    print(table([json.loads(Path(p).read_text()) for p in args.metrics]))


if __name__ == "__main__":
    main()

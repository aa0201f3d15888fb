"""Check the pure-Python PTB tokenizer against pycocoevalcap's Java one on every Flickr8k caption.

    PYTHONPATH=src python benchmarks/check_tokenizer.py ../shared/flickr8k

Reads ``Flickr8k_text/Flickr8k.token.txt`` under the given folder (``<image>#<n>\\t<caption>``
lines), tokenizes all captions in one batch with the official Java ``PTBTokenizer`` and with
``captionkit.metrics.ptb.tokenize_all``, prints up to 20 mismatches and ends with the line
``captions=<n> mismatches=<m>``.  Exit status: 0 if they agree, 1 if not, 2 without Java.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from captionkit.metrics.ptb import java_available, java_tokenize_all, tokenize_all

SHOW = 20


def read_captions(path: Path) -> dict[str, list[str]]:
    """``{"<image>#<n>": [caption]}`` in file order (utf-8, BOM and CRLF tolerated)."""
    captions: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8-sig").replace("\r\n", "\n").split("\n"):
        if line.strip():
            key, sep, caption = line.partition("\t")
            if not sep:
                raise SystemExit(f"{path}: not an '<image>#<n>\\t<caption>' line: {line!r}")
            captions.setdefault(key, []).append(caption)
    return captions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("flickr8k_dir", type=Path, help="folder holding Flickr8k_text/")
    args = ap.parse_args()
    token_file = args.flickr8k_dir / "Flickr8k_text" / "Flickr8k.token.txt"
    if not token_file.is_file():
        print(f"no such file: {token_file}", file=sys.stderr)
        return 2
    if not java_available():
        print("java is not on PATH: cannot run the official PTBTokenizer to compare with",
              file=sys.stderr)
        return 2
    captions = read_captions(token_file)
    t0 = time.perf_counter()
    java = java_tokenize_all(captions)
    t1 = time.perf_counter()
    ours = tokenize_all(captions)
    t2 = time.perf_counter()
    print(f"java {t1 - t0:.1f}s, python {t2 - t1:.1f}s", file=sys.stderr)

    total = mismatches = 0
    for key, caps in captions.items():
        java_caps, our_caps = java.get(key, []), ours.get(key, [])
        for i, caption in enumerate(caps):
            total += 1
            want = java_caps[i] if i < len(java_caps) else None
            got = our_caps[i] if i < len(our_caps) else None
            if want != got:
                mismatches += 1
                if mismatches <= SHOW:
                    print(f"caption: {caption!r}\n   java: {want!r}\n   ours: {got!r}")
    print(f"captions={total} mismatches={mismatches}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

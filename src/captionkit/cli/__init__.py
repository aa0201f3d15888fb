"""Command line: ``captionkit COMMAND``; ``captionkit --help`` lists the commands and
``captionkit COMMAND --help`` a command's options and examples."""

from __future__ import annotations

import sys

from captionkit.cli.commands import IMAGE_SUFFIXES
from captionkit.errors import CaptionKitError


def build_parser():
    """The ``captionkit`` argument parser (:func:`captionkit.cli.parser.build_parser`)."""
    from captionkit.cli.parser import build_parser as _build

    return _build()


def main(argv: list[str] | None = None) -> int:
    """Run one command; captionkit's own errors print one line and return 2 (bugs still raise).

    Idle CPU threads wait passively (set before torch loads, see :mod:`captionkit.threads`)
    and heavy commands use ``--threads`` threads (default: the CPUs this process may use)."""
    from captionkit.threads import configure_threads, prefer_passive_waiting

    prefer_passive_waiting()
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "threads"):
            configure_threads(args.threads)
        args.func(args)
    except CaptionKitError as e:
        print(f"captionkit: error: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = ["IMAGE_SUFFIXES", "build_parser", "main"]

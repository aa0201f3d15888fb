"""Progress bars that behave in logs: drawn on a terminal, silent when output is redirected.

``make demo > log`` would otherwise collect thousands of carriage-return updates; what a log
needs (one line per epoch, the final scores) is printed by the callers themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def interactive(stream=None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm draws) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(iterable: Iterable | None = None, desc: str | None = None, enabled: bool = True,
        leave: bool = False, **kwargs) -> tqdm:
    """A tqdm bar over ``iterable``, disabled unless ``enabled`` and stderr is a terminal (a
    disabled bar still iterates and accepts ``set_postfix``/``update`` as no-ops)."""
    return tqdm(iterable, desc=desc, disable=not (enabled and interactive()), leave=leave,
                **kwargs)

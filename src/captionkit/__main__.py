"""``python -m captionkit`` is the ``captionkit`` command."""

import sys

from captionkit.cli import main

if __name__ == "__main__":
    sys.exit(main())

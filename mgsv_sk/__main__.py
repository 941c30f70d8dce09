"""``python -m mgsv_sk``: the ``mgsv-sk`` command line (see :mod:`mgsv_sk.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

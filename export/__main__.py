"""``python -m export MODEL OUT [--quantize] [--opset N] [--overwrite] [--no-check]``.

The same command as ``mgsv-sk export`` (saved MGSVGrounder -> ONNX bundle), kept so the
deployment package has its own entry point; the options and errors are the CLI's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from mgsv_sk.cli import main as cli_main

    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

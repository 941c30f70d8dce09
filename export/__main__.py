"""``python -m mgsv_sk.export MODEL OUT [--quantize] [--states S] [--index I] [--opset N]
[--overwrite] [--no-check]``.

The deployment package's own entry point: saved MGSVGrounder -> ONNX bundle. The same
options as ``mgsv-sk export``, which takes them from :func:`add_export_arguments` (the
command line calls export, never the reverse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The export command's arguments (shared with ``mgsv-sk export``)."""
    parser.add_argument("model", help="folder written by `fit`")
    parser.add_argument("out", help="bundle folder to create (written atomically)")
    parser.add_argument("--quantize", action="store_true",
                        help="also write int8 graphs (the runtime then serves them by default)")
    parser.add_argument("--states", choices=("float32", "float16", "int8"), default=None,
                        help="store the catalogue's snippet tokens and X-Pool states in "
                             "this type (float16: half the bytes, which the full X-Pool scan "
                             "streams; int8: a quarter); default: as the saved model stores "
                             "them")
    parser.add_argument("--index", choices=("auto", "exact", "hnsw", "ivf"), default=None,
                        help="first-stage index of the catalogue (auto: exact up to 50,000 "
                             "tracks; hnsw and ivf need faiss-cpu); default: the saved "
                             "model's own")
    parser.add_argument("--opset", type=int, default=20,
                        help="ONNX opset, 17-20 (default 20)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing every graph with torch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mgsv_sk.export",
                                     description="Export a saved model to an ONNX bundle.")
    add_export_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from mgsv_sk import MGSVGrounder

        from .to_onnx import export_onnx

        model = MGSVGrounder.load(args.model)
        out = export_onnx(model, args.out, opset=args.opset, quantize=args.quantize,
                          overwrite=args.overwrite, check=not args.no_check,
                          states=args.states, index=args.index)
    except (ValueError, OSError, ImportError) as exc:  # user errors: one line, no traceback
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 1
    sys.stderr.write(f"wrote ONNX bundle {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

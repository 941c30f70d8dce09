"""``python -m export SAVED_MODEL_DIR OUT_DIR [--quantize]``: saved MGSVGrounder -> ONNX bundle."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a model saved by MGSVGrounder.save(dir) to an ONNX bundle "
                    "served by export.runtime.OnnxGrounder (no torch needed there).")
    parser.add_argument("saved_model_dir", help="folder written by MGSVGrounder.save")
    parser.add_argument("out_dir", help="bundle folder to create")
    parser.add_argument("--quantize", action="store_true",
                        help="also write int8 dynamically quantised graphs (served by default)")
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset, 17-20 (default 20)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the ORT-vs-torch check of every graph")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    from mgsv_sk import MGSVGrounder

    from .to_onnx import export_onnx

    grounder = MGSVGrounder.load(args.saved_model_dir)
    out = export_onnx(grounder, args.out_dir, opset=args.opset, quantize=args.quantize,
                      overwrite=args.overwrite, check=not args.no_check)
    print(f"wrote {out} ({len(grounder.catalogue_ids_)} catalogue tracks"
          f"{', int8 + fp32 graphs' if args.quantize else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

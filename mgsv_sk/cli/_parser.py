"""The ``mgsv-sk`` command line (also ``python -m mgsv_sk``).

Commands: ``pack``, ``fit``, ``evaluate``, ``predict``, ``export``, ``demo``, and
``download``, ``catalogue``, ``recommend`` (:mod:`mgsv_sk.cli.media`), ``serve``
(:mod:`mgsv_sk.cli.serve`) (one small
function each in :mod:`mgsv_sk.cli.commands`, importing torch only when it runs, so
``--help`` is instant).

Exit codes: 0 success; 2 usage error (argparse); 1 any error while running: a user mistake
(a wrong path, a malformed CSV, a bad hyper-parameter, a damaged model or feature file...)
is reported as one line ``mgsv-sk: error: <message>`` on stderr without a traceback
(``--debug`` shows it); an unexpected exception (perhaps a bug) is one line too, with its
type, message and where it was raised, and ``--debug`` gives its traceback; 130
interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

from mgsv_sk.errors import MGSVError

from .commands import (
    UserError,
    cmd_demo,
    cmd_evaluate,
    cmd_export,
    cmd_fit,
    cmd_pack,
    cmd_predict,
)
from .media import add_media_commands
from .serve import add_serve_command

__all__ = ["PROG", "USER_ERRORS", "build_parser", "main", "one_line"]

PROG = "mgsv-sk"


#: Exceptions reported as one line: the library raises these for bad input (AnnotationError,
#: FeatureError, MissingFeatureError, ModelFileError, export's BundleError are ValueErrors;
#: OSError covers every file that cannot be found, read or written; TypeError and KeyError
#: come from parameters and data of the wrong kind; BadZipFile/EOFError from damaged files).
USER_ERRORS: tuple[type[BaseException], ...] = (
    MGSVError, UserError, ValueError, TypeError, KeyError, OSError, EOFError,
    zipfile.BadZipFile,
)
#: Raised for bad input with a message that says so by itself; others are prefixed with
#: their type (``KeyError: 'x'`` means little as ``'x'``).
_SELF_EXPLAINING: tuple[type[BaseException], ...] = (MGSVError, UserError, ValueError,
                                                      OSError)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (an AnnotationError's list joined by '; ')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    rest = [line[2:] if line.startswith("- ") else line for line in lines[1:]]
    return lines[0] + (" " + "; ".join(rest) if rest else "")


def _describe(exc: BaseException) -> str:
    message = one_line(exc)
    if isinstance(exc, _SELF_EXPLAINING):
        return message
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        message = repr(exc.args[0])  # str(KeyError) is the bare key
    name = type(exc).__name__
    return message if message.startswith(name) else f"{name}: {message}"


def _origin(exc: BaseException) -> str:
    """``file:line in function`` of the frame that raised ``exc``."""
    tb = exc.__traceback__
    if tb is None:
        return "an unknown place"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename}:{tb.tb_lineno} in {code.co_name}"


# -- the parser -------------------------------------------------------------------------
def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """-v/-q/--debug, accepted before and after the command (a subcommand's copy does not
    reset what was given before it)."""
    default: Any = argparse.SUPPRESS if suppress else False
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="progress bars and INFO logging")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no status messages or warnings (results and errors still shown)")
    group.add_argument("--debug", action="store_true", default=default,
                       help="show the traceback of every error")
    return parent


def _command(sub: Any, name: str, func: Any, summary: str, description: str,
             example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=textwrap.fill(description, 79),
        epilog=f"example:\n  {example}",
        parents=[_common_options(suppress=True)],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def _features_option(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("-f", "--features", required=required, metavar="PATH",
                        help="packed store (from `pack`) or MGSV-EC feature tree"
                             + ("" if required else "; default: the path the model was fitted "
                                                    "with"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[_common_options(suppress=False)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Music grounding by short video (MGSV): pack MGSV-EC features, fit the MaDe "
            "model, evaluate it with the protocol's metrics, predict, export to ONNX. "
            "`mgsv-sk COMMAND --help` explains each command.", 79),
        epilog="typical session:\n"
               "  mgsv-sk pack release/ packed/ --csv train_data.csv --csv test_data.csv\n"
               "  mgsv-sk fit train_data.csv model/ -f packed/ --param max_epochs=8\n"
               "  mgsv-sk evaluate model/ test_data.csv --json metrics.json\n"
               "  mgsv-sk predict model/ test_data.csv top5.jsonl --mode msg --top-k 5 "
               "--catalogue input\n"
               "  mgsv-sk demo            # all of it on synthetic data, in under a minute\n\n"
               "exit codes: 0 success, 1 a mistake in the input (one line `mgsv-sk: error: "
               "...` on stderr;\n  --debug for the traceback), 2 a usage error, 130 "
               "interrupted")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_pack, _add_fit, _add_evaluate, _add_predict, _add_export, _add_demo):
        add(sub)
    add_media_commands(sub, _command)
    add_serve_command(sub, _command)
    return parser


def _add_pack(sub: Any) -> None:
    p = _command(sub, "pack", cmd_pack, "feature tree -> packed memory-mapped store",
                 "Read the MGSV-EC .pt feature tree once (each track once) and write a packed, "
                 "memory-mapped store that fit, evaluate and predict read much faster.",
                 "mgsv-sk pack release/ packed/ --csv release/dataset/MGSV-EC/train_data.csv -v")
    p.add_argument("tree", help="release root (holding features/Kuai_feature) or Kuai_feature")
    p.add_argument("out", help="store folder to create (written atomically)")
    p.add_argument("--csv", action="append", default=[], metavar="CSV",
                   help="pack only the videos and tracks of this annotation CSV (repeatable); "
                        "default: everything in the tree")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _add_fit(sub: Any) -> None:
    p = _command(sub, "fit", cmd_fit, "train MGSVGrounder and save it",
                 "Train MGSVGrounder on an MGSV-EC annotation CSV and save it to a folder "
                 "(JSON + .npz, no pickle). Hyper-parameters are the estimator's keywords, "
                 "from --params FILE.json and/or repeated --param NAME=VALUE (VALUE read as "
                 "JSON: 64, 1e-3, true, null, \"miou\"; the latter wins).",
                 "mgsv-sk fit train_data.csv model/ -f packed/ --param d_model=128 "
                 "--param max_epochs=8 -v")
    p.add_argument("csv", help="training annotations (MGSV-EC CSV)")
    p.add_argument("out", help="model folder to create")
    _features_option(p, required=True)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="one hyper-parameter (repeatable)")
    p.add_argument("--params", metavar="FILE.json", help="a JSON object of hyper-parameters")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _add_evaluate(sub: Any) -> None:
    p = _command(sub, "evaluate", cmd_evaluate, "the protocol's metrics on a split",
                 "Evaluate a saved model on an annotated split: SmG (mIoU, IoU@0.3/0.5/0.7), "
                 "V2MR (R@1/5/10/25/50/100, MedianR, MeanR, MRR; gallery = the split's own "
                 "tracks) and MsG (MoR@k at IoU 0.5 / 0.7). Rates are fractions.",
                 "mgsv-sk evaluate model/ test_data.csv --trivial --json metrics.json")
    p.add_argument("model", help="folder written by `fit` (MGSVGrounder.save)")
    p.add_argument("csv", help="annotated split (MGSV-EC CSV)")
    _features_option(p, required=False)
    p.add_argument("--json", metavar="OUT.json",
                   help="also write the metrics as JSON (replaced if it exists)")
    p.add_argument("--trivial", action="store_true",
                   help="add the trivial [0, video duration] baseline as a column")


def _add_predict(sub: Any) -> None:
    p = _command(sub, "predict", cmd_predict, "moments (SmG) or ranked tracks + moments (MsG)",
                 "Predict with a saved model. SmG grounds each video on the track in its "
                 "music_id column; MsG retrieves the best catalogue track (or the --top-k "
                 "best) and the moment on each. Output: CSV, or JSON lines in the "
                 "moment-retrieval convention (one object per video with pred_music_ids, "
                 "pred_music_scores, pred_relevant_windows [[start, end, score]], "
                 "pred_windows_by_music).",
                 "mgsv-sk predict model/ test_data.csv pred.jsonl --mode msg --top-k 10")
    p.add_argument("model", help="folder written by `fit`")
    p.add_argument("csv", help="videos to predict (video_id; music_id for SmG)")
    p.add_argument("out", help="output file (.csv or .jsonl), or - for stdout")
    _features_option(p, required=False)
    p.add_argument("--mode", choices=("auto", "smg", "msg"), default="auto",
                   help="smg: ground on the CSV's music_id; msg: retrieve from the catalogue; "
                        "auto (default): smg when the CSV has music_id")
    p.add_argument("--top-k", type=int, metavar="K", help="MsG: the K best tracks per video")
    p.add_argument("--moments-per-track", type=int, default=1, metavar="M",
                   help="up to M non-overlapping moments per track, best first (default 1; "
                        "all of them in the JSON lines' pred_relevant_windows)")
    p.add_argument("--moment-weight", type=float, default=None, metavar="W",
                   help="MsG: re-rank each video's best tracks by score + W * "
                        "logit(moment_score) (default: the model's own setting; 0: plain "
                        "retrieval order)")
    p.add_argument("--rerank-depth", type=int, default=None, metavar="D",
                   help="MsG: how many retrieval candidates are re-ranked (default: the "
                        "model's own setting)")
    p.add_argument("--catalogue", default="model", metavar="SOURCE",
                   help="MsG tracks to search: model (default: the tracks seen in fit), "
                        "input (the CSV's music_ids), or a file (CSV with music_id, or one id "
                        "per line)")
    p.add_argument("--format", choices=("csv", "jsonl"), help="default: from OUT's extension")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _add_export(sub: Any) -> None:
    p = _command(sub, "export", cmd_export, "saved model -> ONNX bundle (served without torch)",
                 "Export a saved model to an ONNX bundle (graphs, catalogue arrays, "
                 "manifest.json with checksums) served by mgsv_sk.export.runtime.OnnxGrounder with "
                 "numpy, pandas and onnxruntime only.",
                 "mgsv-sk export model/ bundle/ --quantize")
    from mgsv_sk.export.__main__ import (
        add_export_arguments,  # the CLI calls export, not the reverse
    )

    add_export_arguments(p)


def _add_demo(sub: Any) -> None:
    p = _command(sub, "demo", cmd_demo, "synthetic data end to end, next to the trivial baseline",
                 "Write a synthetic MGSV-EC release, pack it, fit a small MGSVGrounder, "
                 "evaluate it on a synthetic test split and print its metrics next to the "
                 "trivial [0, video duration] baseline. Runs offline in well under a minute.",
                 "mgsv-sk demo --dir demo_out/")
    p.add_argument("--dir", help="keep everything in this new or empty folder (default: a "
                                 "temporary folder, removed after)")
    p.add_argument("--train-videos", type=int, default=1000, metavar="N", help="default 1000")
    p.add_argument("--train-tracks", type=int, default=100, metavar="N", help="default 100")
    p.add_argument("--test-videos", type=int, default=100, metavar="N",
                   help="test videos, each with its own track (default 100)")
    p.add_argument("--epochs", type=int, default=6, metavar="N", help="default 6")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--n-threads", type=int, metavar="N",
                   help="torch threads for fitting (default: torch's setting; 1 is faster on "
                        "a machine busy with other work)")


def _configure_output(args: argparse.Namespace) -> None:
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format=f"{PROG}: %(levelname)s: %(name)s: %(message)s")
    if args.quiet:
        warnings.simplefilter("ignore")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mgsv-sk`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet exclude each other")
    for name in ("top_k", "moments_per_track", "epochs", "train_videos", "train_tracks",
                 "test_videos", "n_threads", "batch"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    _configure_output(args)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {_describe(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # not a known input error: perhaps a bug, so say where
        if args.debug:
            raise
        print(f"{PROG}: error: {_describe(exc)} (unexpected {type(exc).__name__} at "
              f"{_origin(exc)}; if the input is right this is a bug: rerun with --debug for "
              "the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

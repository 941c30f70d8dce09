"""The commands of the ``mgsv-sk`` command line, one small function each, and their
helpers; :mod:`mgsv_sk.cli` builds the parser and maps errors to exit codes.

Each ``cmd_*(args) -> int`` imports what it needs (torch included) when it runs, so the
parser and ``--help`` stay instant. Status messages go to stdout through :func:`_say`
(silenced by ``-q``); results (tables, predictions to ``-``) are always printed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mgsv_sk.errors import ArtifactExistsError, ArtifactNotFoundError, MGSVError
from mgsv_sk.files import MODEL_FOLDER, ONNX_BUNDLE, PACKED_STORE, Artefact, check_destination


class UserError(MGSVError):
    """A mistake in the command's arguments, found by the CLI itself."""


# -- shared helpers ---------------------------------------------------------------------
def _say(args: argparse.Namespace, message: str) -> None:
    """A status message (stdout), silenced by -q."""
    if not args.quiet:
        print(message, flush=True)


def _existing(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ArtifactNotFoundError(f"{what} not found: {path}")
    return p


def _free(path: str, overwrite: bool, replaces: Artefact | None = None) -> Path:
    """``path`` may be written: it does not exist, or ``--overwrite`` was given (and, for a
    folder output, ``replaces`` -- an :class:`mgsv_sk._atomic.Artefact` -- recognises what
    is there: only an artefact of ours is ever replaced). Checked before any work."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise ArtifactExistsError(f"{path} already exists; pass --overwrite to replace it")
    if replaces is not None:
        check_destination(p, overwrite=overwrite, replaces=replaces)
    return p


def _load_model(args: argparse.Namespace) -> Any:
    _existing(args.model, "saved model folder")
    from mgsv_sk.estimators.made import MGSVGrounder

    model = MGSVGrounder.load(args.model, features=args.features)
    if model.features is None:
        raise UserError(f"the model in {args.model} was saved without a feature path; "
                        "pass --features PATH (a packed store or an MGSV-EC feature tree)")
    return model


def parse_params(pairs: Sequence[str], params_file: str | None) -> dict[str, Any]:
    """Hyper-parameters from ``--params FILE.json`` then ``--param NAME=VALUE`` (which wins).

    A value is read as JSON when it parses (``64``, ``1e-3``, ``true``, ``null``,
    ``["dual"]``), as ``None``/``True``/``False`` in Python spelling, else as a string.
    """
    params: dict[str, Any] = {}
    if params_file is not None:
        try:
            loaded = json.loads(_existing(params_file, "parameter file").read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{params_file} is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise UserError(f"{params_file} must hold a JSON object {{name: value}}, "
                            f"got a {type(loaded).__name__}")
        params.update(loaded)
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--param expects NAME=VALUE, got {pair!r}")
        params[name.strip()] = _parse_value(text)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def _parse_value(text: str) -> Any:
    special = {"none": None, "true": True, "false": False}
    if text.strip().lower() in special:
        return special[text.strip().lower()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _check_params(params: dict[str, Any], valid: dict[str, Any]) -> dict[str, Any]:
    names = sorted(set(valid) - {"features"})
    if "features" in params:
        raise UserError("give the feature source with --features, not as a parameter")
    unknown = [n for n in params if n not in valid]
    if unknown:
        hints = [f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                 for n in unknown for close in [difflib.get_close_matches(n, names, n=1)]]
        raise UserError(f"unknown MGSVGrounder parameter(s) {', '.join(hints)}; valid names: "
                        + ", ".join(names))
    out = dict(params)
    for name, value in params.items():  # "dual,xpool" for a tuple-valued parameter
        if isinstance(valid[name], tuple) and isinstance(value, str):
            out[name] = tuple(v.strip() for v in value.split(",") if v.strip())
    return out


def format_table(reports: dict[str, dict[str, float]]) -> str:
    """The protocol's metrics, one row each grouped by task, one column per model."""
    keys = list(next(iter(reports.values())))
    width = max(12, *(len(name) for name in reports))

    def task(key: str) -> str:
        return "SmG" if "IoU" in key and not key.startswith("MoR") else (
            "MsG" if key.startswith("MoR") else "V2MR")

    lines = [f"{'task':6s}{'metric':12s}" + "".join(f"{n:>{width + 2}s}" for n in reports)]
    previous = ""
    for key in keys:
        label = task(key) if task(key) != previous else ""
        previous = task(key)
        fmt = ".1f" if key in ("MedianR", "MeanR") else ".3f"
        cells = "".join(f"{r.get(key, float('nan')):>{width + 2}{fmt}}" for r in reports.values())
        lines.append(f"{label:6s}{key:12s}{cells}")
    return "\n".join(lines)


def _write_json(path: str, payload: dict[str, Any]) -> None:
    from mgsv_sk.data.jsonl import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


# -- commands ---------------------------------------------------------------------------
def cmd_pack(args: argparse.Namespace) -> int:
    from mgsv_sk.data import read_annotations
    from mgsv_sk.data.features import as_feature_source, pack_features

    src = as_feature_source(str(_existing(args.tree, "feature tree")))
    _free(args.out, args.overwrite, PACKED_STORE)
    video_ids = music_ids = None
    if args.csv:
        frames = [read_annotations(path, required=("video_id", "music_id")) for path in args.csv]
        video_ids = [v for f in frames for v in f["video_id"]]
        music_ids = [m for f in frames for m in f["music_id"]]
    store = pack_features(src, args.out, video_ids=video_ids, music_ids=music_ids,
                          overwrite=args.overwrite, verbose=args.verbose)
    _say(args, f"packed {len(store.video_ids())} videos and {len(store.music_ids())} tracks "
               f"into {args.out}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from mgsv_sk.data import read_annotations

    params = parse_params(args.param, args.params)
    features = _existing(args.features, "features")
    out = _free(args.out, args.overwrite, MODEL_FOLDER)  # before training, not after
    frame = read_annotations(_existing(args.csv, "annotation CSV"))
    from mgsv_sk.estimators.made import MGSVGrounder

    params = _check_params(params, MGSVGrounder().get_params(deep=False))
    params.setdefault("verbose", 1 if args.verbose else 0)
    model = MGSVGrounder(features=str(features.resolve()), **params)
    started = time.perf_counter()
    model.fit(frame)
    model.save(out, overwrite=args.overwrite)
    _say(args, f"trained {model.n_epochs_} epoch(s) on {len(frame)} videos in "
               f"{time.perf_counter() - started:.1f} s (kept epoch {model.best_epoch_}, "
               f"stopped: {model.stopped_}); saved to {out}")
    return 0


def _evaluate_reports(model: Any, frame: Any, trivial: bool) -> dict[str, dict[str, float]]:
    from mgsv_sk.estimators.baselines import TrivialGrounder
    from mgsv_sk.evaluation.scoring import evaluate

    reports = {"MGSVGrounder": evaluate(model, frame)}
    if trivial:
        baseline = TrivialGrounder(features=model.features).fit(frame)
        reports["trivial [0, duration]"] = evaluate(baseline, frame)
    return reports


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mgsv_sk.data import read_annotations

    _existing(args.model, "saved model folder")
    frame = read_annotations(_existing(args.csv, "annotation CSV"))
    model = _load_model(args)
    reports = _evaluate_reports(model, frame, args.trivial)
    print(f"{len(frame)} videos, gallery of {frame['music_id'].nunique()} tracks "
          "(the split's own, as the protocol ranks them)")
    print(format_table(reports))
    if args.json:
        _write_json(args.json, {
            "model": str(Path(args.model).resolve()), "annotations": str(Path(args.csv).resolve()),
            "n_videos": len(frame), "gallery_size": int(frame["music_id"].nunique()),
            "metrics": reports["MGSVGrounder"],
            "baselines": {k: v for k, v in reports.items() if k != "MGSVGrounder"},
        })
        _say(args, f"wrote {args.json}")
    return 0


def _output_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    suffix = Path(args.out).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv" or args.out == "-":
        return "csv"
    raise UserError(f"cannot tell the format of {args.out!r} from its extension: name it "
                    ".csv or .jsonl, or pass --format csv|jsonl")


def _catalogue(spec: str, frame: Any) -> list[str]:
    """Music ids of ``--catalogue input|PATH`` (a CSV with music_id, or one id per line,
    read by :func:`mgsv_sk.data._readers.read_id_list`, as the API reads a path)."""
    if spec == "input":
        if "music_id" not in frame.columns:
            raise UserError("--catalogue input needs a music_id column in the CSV")
        return list(dict.fromkeys(frame["music_id"]))
    from mgsv_sk.data import read_id_list

    ids = read_id_list(_existing(spec, "catalogue file"), "catalogue file")
    if not ids:
        raise UserError(f"catalogue file {spec} lists no music_id")
    return ids


def cmd_predict(args: argparse.Namespace) -> int:
    from mgsv_sk.data import read_annotations

    fmt = _output_format(args)
    if args.out != "-":
        _free(args.out, args.overwrite)
    _existing(args.model, "saved model folder")
    required = ("video_id", "music_id") if args.mode == "smg" else ("video_id",)
    frame = read_annotations(_existing(args.csv, "CSV"), required=required)
    mode = args.mode if args.mode != "auto" else ("smg" if "music_id" in frame else "msg")
    if mode == "smg" and (args.top_k is not None or args.catalogue != "model"):
        raise UserError("--top-k and --catalogue are for MsG (--mode msg): SmG grounds each "
                        "video on its own track")
    model = _load_model(args)
    if mode == "msg" and args.catalogue != "model":
        model.set_catalogue(_catalogue(args.catalogue, frame))
    query = frame if mode == "smg" else frame.drop(columns="music_id", errors="ignore")
    moments = args.moments_per_track
    rerank = {"moment_weight": args.moment_weight, "rerank_depth": args.rerank_depth}
    if mode == "msg" and args.top_k is not None:
        pred = model.rank(query, k=args.top_k, moments_per_track=moments, **rerank)
    else:
        pred = model.predict(query, moments_per_track=moments, **rerank)
        pred.insert(0, "video_id", query["video_id"].to_numpy())
    if "windows" in pred.columns and fmt == "csv":  # one cell: "start end score; ..."
        pred["windows"] = [";".join(" ".join(f"{v:.3f}" for v in w) for w in ws)
                           for ws in pred["windows"]]
    from mgsv_sk.data.jsonl import predictions_to_jsonl, write_text_atomic

    if args.out == "-":
        if fmt == "jsonl":
            predictions_to_jsonl(pred, sys.stdout)
        else:
            pred.to_csv(sys.stdout, index=False)
        return 0
    if fmt == "jsonl":
        predictions_to_jsonl(pred, args.out)
    else:
        write_text_atomic(args.out, pred.to_csv(index=False))
    _say(args, f"wrote {mode.upper()} predictions for {len(frame)} videos "
               f"({len(pred)} rows) to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _existing(args.model, "saved model folder")
    _free(args.out, args.overwrite, ONNX_BUNDLE)
    try:  # the deployment side is a separate package of this distribution
        from mgsv_sk.export.to_onnx import export_onnx
    except ImportError as exc:
        raise UserError(f"the export package is not importable ({exc}); install mgsv-sk "
                        "with its export package") from exc
    from mgsv_sk.estimators.made import MGSVGrounder

    model = MGSVGrounder.load(args.model)
    out = export_onnx(model, args.out, opset=args.opset, quantize=args.quantize,
                      overwrite=args.overwrite, check=not args.no_check,
                      states=args.states, index=args.index)
    stored = f", {args.states} snippet arrays" if args.states else ""
    _say(args, f"wrote ONNX bundle {out} ({len(model.catalogue_ids_)} catalogue tracks"
               f"{', int8 + fp32 graphs' if args.quantize else ''}{stored})")
    return 0


#: The demo's network (the default window head, narrower): trains in seconds on 2 cores.
DEMO_PARAMS: dict[str, Any] = dict(
    d_model=128, n_heads=4, temporal_dropout=0.1, lr=1e-3, batch_size=64, patience=3)


def _run_demo(args: argparse.Namespace, root: Path) -> dict[str, dict[str, float]]:
    from mgsv_sk.data import read_annotations
    from mgsv_sk.data.features import pack_features
    from mgsv_sk.data.synthetic import make_synthetic_mgsv
    from mgsv_sk.estimators.baselines import RidgeGrounder, TrivialGrounder
    from mgsv_sk.estimators.made import MGSVGrounder
    from mgsv_sk.evaluation.scoring import evaluate

    _say(args, f"1/4 writing a synthetic MGSV-EC release under {root / 'release'}")
    train = make_synthetic_mgsv(args.train_videos, args.train_tracks, random_state=args.seed,
                                split="train", path=root / "release")
    test = make_synthetic_mgsv(args.test_videos, args.test_videos, random_state=args.seed + 1,
                               split="test", path=root / "release")
    train_df, test_df = read_annotations(train.csv_path), read_annotations(test.csv_path)
    _say(args, "2/4 packing the .pt feature tree")
    store = pack_features(root / "release", root / "packed", verbose=args.verbose,
                          video_ids=[*train_df["video_id"], *test_df["video_id"]],
                          music_ids=[*train_df["music_id"], *test_df["music_id"]])
    _say(args, f"3/4 fitting MGSVGrounder on {len(train_df)} videos / "
               f"{train_df['music_id'].nunique()} tracks ({args.epochs} epoch(s) at most)")
    model = MGSVGrounder(features=store, max_epochs=args.epochs, random_state=args.seed,
                         n_threads=args.n_threads, verbose=int(args.verbose),
                         **DEMO_PARAMS).fit(train_df)
    model.save(root / "model")
    _say(args, f"4/4 evaluating on {len(test_df)} test videos against their "
               f"{test_df['music_id'].nunique()} tracks")
    reports = {"MGSVGrounder": evaluate(model, test_df),
               "ridge baseline": evaluate(RidgeGrounder(features=store).fit(train_df), test_df),
               "trivial [0, duration]": evaluate(TrivialGrounder().fit(train_df), test_df,
                                                  features=store)}
    _write_json(str(root / "metrics.json"), reports)
    return reports


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.dir is None:
        with tempfile.TemporaryDirectory(prefix="mgsv_demo_") as tmp:
            reports = _run_demo(args, Path(tmp))
    else:
        root = Path(args.dir)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise UserError(f"--dir {args.dir} exists and is not an empty folder; choose a "
                            "new or empty one")
        reports = _run_demo(args, root)
    print(format_table(reports))
    _say(args, f"done in {time.perf_counter() - started:.1f} s"
               + (f"; release, packed store, model and metrics.json kept in {args.dir}"
                  if args.dir else ""))
    return 0

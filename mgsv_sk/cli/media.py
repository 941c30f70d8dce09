"""The media commands of ``mgsv-sk``: ``download``, ``catalogue``, ``recommend``.

Kept apart from :mod:`mgsv_sk.cli.commands` (one function per command, heavy imports
inside); :func:`add_media_commands` adds their parsers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mgsv_sk.files import ONNX_BUNDLE, regular_file

from .commands import UserError, _existing, _free, _say

__all__ = ["add_media_commands", "cmd_catalogue", "cmd_download", "cmd_recommend",
           "load_encoder"]


def load_encoder(spec: str, kind: str) -> Any:
    """An encoder from ``spec``: a ``.onnx`` file (onnxruntime), else a hub name or a local
    folder of a transformers model. ``kind`` is "video" or "music"."""
    if spec.lower().endswith(".onnx"):
        from ..extract.onnx_encoders import OrtEncoder

        return OrtEncoder(_existing(spec, "ONNX encoder"))
    from ..extract.encoders import AstEncoder, ClipImageEncoder

    return (ClipImageEncoder if kind == "video" else AstEncoder).from_pretrained(spec)


def cmd_download(args: argparse.Namespace) -> int:
    from ..extract.fetch import LICENCE_NOTE, fetch_mgsv_ec

    if args.pack and not (Path(args.pack) / "meta.json").is_file():
        _free(args.pack, False)  # a store of an earlier run is reused, anything else refused
    result = fetch_mgsv_ec(args.dir, pack=args.pack, repo_id=args.repo, revision=args.revision,
                           endpoint=args.endpoint, verbose=args.verbose)
    _say(args, f"MGSV-EC in {result.root}: {', '.join(sorted(result.csvs))} CSVs under "
               f"dataset/MGSV-EC, features under features/Kuai_feature"
               + (f", packed into {args.pack}" if args.pack else "")
               + f" ({len(result.downloaded)} file(s) downloaded now)")
    _say(args, LICENCE_NOTE)
    return 0


def cmd_catalogue(args: argparse.Namespace) -> int:
    from ..extract.recommend import build_catalogue

    for path in args.music:
        _existing(path, "music file or folder")
    report = build_catalogue(args.music, args.out, music_encoder=load_encoder(
        args.music_encoder, "music"), batch=args.batch, verbose=args.verbose)
    _say(args, report.summary())
    store = report.output
    _say(args, f"catalogue {args.out}: {0 if store is None else len(store.music_ids())} tracks")
    return 1 if report.failed else 0


def _grounder(model: str, catalogue: str | None) -> Any:
    folder = _existing(model, "model folder or ONNX bundle")
    if ONNX_BUNDLE.recognises(folder):
        from mgsv_sk.export.runtime import OnnxGrounder

        grounder: Any = OnnxGrounder.load(folder)
    else:
        from mgsv_sk.estimators.made import MGSVGrounder

        grounder = MGSVGrounder.load(folder)
    if catalogue is not None:
        from mgsv_sk.data.packed import PackedFeatures

        store = PackedFeatures(_existing(catalogue, "catalogue store"))
        if not store.music_ids():
            raise UserError(f"catalogue {catalogue} holds no tracks; build it with "
                            "`mgsv-sk catalogue MUSIC_DIR OUT`")
        grounder.set_catalogue(store.music_ids(), features=store)
    return grounder


def cmd_recommend(args: argparse.Namespace) -> int:
    if args.out not in (None, "-"):
        _free(args.out, args.overwrite)
    for path in args.videos:  # before any model is loaded: a FIFO is named, never opened
        if not Path(_existing(path, "video")).is_dir():
            regular_file(path, "video")
    grounder = _grounder(args.model, args.catalogue)
    encoder = (load_encoder(args.video_encoder, "video") if args.video_encoder
               else getattr(grounder, "video_encoder", None))
    if encoder is None:
        encoder = load_encoder("openai/clip-vit-base-patch32", "video")
    table = grounder.recommend(args.videos, k=args.top_k, video_encoder=encoder,
                               moments_per_track=args.moments_per_track)
    from mgsv_sk.data.jsonl import predictions_to_records, write_text_atomic

    if args.out is not None and args.out.lower().endswith(".csv"):
        write_text_atomic(args.out, table.drop(columns="windows", errors="ignore")
                          .to_csv(index=False))
    else:
        paths = dict(zip(table["video_id"], table["video_path"]))
        lines = [json.dumps({**rec, "video_path": paths[rec["video_id"]]})
                 for rec in predictions_to_records(table.drop(columns="video_path"))]
        text = "\n".join(lines) + "\n"
        if args.out in (None, "-"):
            sys.stdout.write(text)
        else:
            write_text_atomic(args.out, text)
    if args.out not in (None, "-"):
        _say(args, f"wrote the top {args.top_k} tracks of {table['video_id'].nunique()} "
                   f"video(s) to {args.out}")
    return 0


def add_media_commands(sub: Any, command: Any) -> None:
    """Add ``download``, ``catalogue`` and ``recommend`` to the subparsers ``sub``;
    ``command`` is the CLI's parser factory."""
    p = command(sub, "download", cmd_download, "fetch the MGSV-EC release from its hub dataset",
                "Download the MGSV-EC split CSVs and feature zip from the hub dataset "
                "xxayt/MGSV-EC (resumable, cached, checksummed), extract them into the "
                "layout `pack` and `fit` read, and optionally pack them. Data licence: "
                "CC BY-NC 4.0 (dataset card) / CC BY-NC-ND 4.0 (code repository README).",
                "mgsv-sk download mgsv_ec/ --pack packed/ -v")
    p.add_argument("dir", help="folder to fill (rerun to resume)")
    p.add_argument("--pack", metavar="STORE", help="also pack the features into STORE")
    p.add_argument("--repo", default="xxayt/MGSV-EC", help="hub dataset (default xxayt/MGSV-EC)")
    p.add_argument("--revision", help="dataset revision (default: the latest)")
    p.add_argument("--endpoint", help="hub endpoint (default: HF_ENDPOINT or huggingface.co)")

    p = command(sub, "catalogue", cmd_catalogue, "audio files -> a catalogue store",
                "Extract AST features of a folder (or list) of audio files, as the release "
                "did, into a packed store that `recommend --catalogue` searches; music_id is "
                "each file's stem. Resumable: a rerun adds new files only.",
                "mgsv-sk catalogue music/ catalogue/ -v")
    p.add_argument("music", nargs="+", help="audio files or folders")
    p.add_argument("out", help="catalogue store to create or extend")
    p.add_argument("--music-encoder", default="MIT/ast-finetuned-audioset-10-10-0.4593",
                   metavar="NAME|PATH", help="AST hub name, local folder, or .onnx file")
    p.add_argument("--batch", type=int, default=16, help="windows per encoder call")

    p = command(sub, "recommend", cmd_recommend, "video files -> the tracks and moments to play",
                "Extract each video's CLIP frames, rank the catalogue with a saved model or "
                "an ONNX bundle, and write the top-k tracks with the moment on each as JSON "
                "lines (default, to stdout) or CSV.",
                "mgsv-sk recommend clip.mp4 --model model/ --catalogue catalogue/ --top-k 5")
    p.add_argument("videos", nargs="+", help="video files or folders")
    p.add_argument("--model", required=True, help="folder from `fit`, or a bundle from `export`")
    p.add_argument("--catalogue", metavar="STORE",
                   help="store from `catalogue` (default: the model's own catalogue)")
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="default 10")
    p.add_argument("--moments-per-track", type=int, default=1, metavar="M", help="default 1")
    p.add_argument("--video-encoder", metavar="NAME|PATH",
                   help="CLIP hub name, local folder or .onnx file (default: the bundle's "
                        "encoder, else openai/clip-vit-base-patch32)")
    p.add_argument("-o", "--out", help="output .jsonl or .csv (default: JSON lines on stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")

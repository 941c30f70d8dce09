"""From video files to the music to play: extract the videos, rank the grounder's
catalogue, return the top-k tracks with the moment(s) on each.

Works with any grounder with ``rank(X, k, features=, moments_per_track=)`` and a
catalogue (:class:`mgsv_sk.MGSVGrounder`, :class:`export.runtime.OnnxGrounder`); the
videos' features are held in memory only. numpy, pandas and PyAV: no torch here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mgsv_sk.errors import InvalidInputError

from .encoders import DEFAULT_CLIP, Encoder
from .pipeline import media_ids
from .video import load_clip

__all__ = ["build_catalogue", "recommend_videos", "video_query"]


def video_query(video_paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
                encoder: Encoder) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Extract videos for a query: the frame (``video_id`` = file stem, ``video_path``,
    ``video_start`` 0, ``video_end`` and ``video_segment_duration`` = the video's seconds)
    and ``{video_id: (F, dim) frame features}``.

    Raises
    ------
    ValueError
        Naming the first file that cannot be read, and why.
    """
    paths = [video_paths] if isinstance(video_paths, (str, os.PathLike)) else list(video_paths)
    if not paths:
        raise InvalidInputError("video_paths is empty: pass one or more video files")
    items = media_ids(paths, "video")
    if not items:
        raise InvalidInputError(f"no video files in {[str(p) for p in paths]}: give video files or "
                         "folders holding .mp4 / .mov / .mkv / .webm / .avi / .m4v files")
    rows, feats = [], {}
    for key, path in items.items():
        try:
            clip = load_clip(path)
        except Exception as exc:
            raise InvalidInputError(f"cannot read video {path}: {type(exc).__name__}: {exc}; check "
                             "that it is a video file PyAV (FFmpeg) can decode") from exc
        feats[key] = encoder.encode(clip.pixels)
        rows.append({"video_id": key, "video_path": str(path), "video_start": 0.0,
                     "video_end": clip.duration, "video_segment_duration": clip.duration})
    return pd.DataFrame(rows), feats


def recommend_videos(grounder: Any, video_paths: Any, k: int = 10, *,
                     video_encoder: Encoder | None = None,
                     moments_per_track: int = 1) -> pd.DataFrame:
    """Top-``k`` catalogue tracks per video file with the moment(s) to play.

    Returns
    -------
    DataFrame
        ``rank``'s columns (``video_id, rank, music_id, score, start, end, moment_score``,
        and ``windows`` with ``moments_per_track > 1``) plus ``video_path``.
    """
    if video_encoder is None:
        from .encoders import ClipImageEncoder

        video_encoder = ClipImageEncoder.from_pretrained(DEFAULT_CLIP)
    frame, feats = video_query(video_paths, video_encoder)
    query = frame[["video_id", "video_segment_duration"]]
    out = grounder.rank(query, k=k, features=(feats, {}), moments_per_track=moments_per_track)
    paths = dict(zip(frame["video_id"], frame["video_path"]))
    out.insert(1, "video_path", [paths[v] for v in out["video_id"]])
    return out


def build_catalogue(music_paths: Sequence[str | os.PathLike[str]],
                    out: str | os.PathLike[str], *, music_encoder: Encoder | None = None,
                    batch: int = 64, verbose: bool = False) -> Any:
    """Extract a folder (or list) of audio files into a packed store usable as a catalogue
    (``music_id`` = file stem); rerunning adds new files and skips done ones.

    Returns
    -------
    ExtractionReport
        With ``output``, the opened packed store.
    """
    from .pipeline import extract_features

    if music_encoder is None:
        from .encoders import DEFAULT_AST, AstEncoder

        music_encoder = AstEncoder.from_pretrained(DEFAULT_AST)
    return extract_features(Path(out), music=music_paths, music_encoder=music_encoder,
                            layout="packed", batch=batch, verbose=verbose)

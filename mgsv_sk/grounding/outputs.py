"""What a grounder answers: the output columns, the moments clipped to what the model
knows of each track, the moment lengths of a call's videos and the finiteness check of
every result. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mgsv_sk.data import has_video_durations, video_durations
from mgsv_sk.data.features import FeatureSource, require_finite
from mgsv_sk.data.spans import MAX_MUSIC_SECONDS, SNIPPET_HOP_SECONDS
from mgsv_sk.search import TrackIndex

__all__ = ["PREDICTION_COLUMNS", "RANK_COLUMNS", "Moments", "TopTracks", "check_outputs",
           "moment_lengths", "track_seconds"]

#: Columns of :meth:`BaseGrounder.predict`'s output.
PREDICTION_COLUMNS = ("music_id", "start", "end", "score", "moment_score")
#: Columns of :meth:`BaseGrounder.rank`'s output.
RANK_COLUMNS = ("video_id", "rank", "music_id", "score", "start", "end", "moment_score")

#: start, end (seconds) and moment score of up to ``moments`` moments per pair, each
#: (n, moments), NaN-padded.
Moments = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TopTracks:
    """:meth:`BaseGrounder.rank`'s rows as arrays, ``k`` per video, by video then rank:
    ``video_ids``, ``ranks`` (1 = best), ``music_ids``, ``score`` (what the ranking orders
    by) [n k], and start, end (seconds), moment score of up to ``moments`` moments on each
    track, [n k, moments], best first, NaN-padded."""

    video_ids: np.ndarray
    ranks: np.ndarray
    music_ids: list[str]
    score: np.ndarray
    start: np.ndarray
    end: np.ndarray
    moment: np.ndarray


def track_seconds(catalogue: TrackIndex, rows: np.ndarray) -> np.ndarray | None:
    """Seconds of music the model knows of each track ``rows`` (2.5 s per valid
    snippet, at most 240 s), or None for a catalogue without lengths (a baseline's)."""
    lengths = getattr(catalogue, "lengths", None)
    if lengths is None:
        return None
    return np.minimum(np.asarray(lengths, np.float64)[np.asarray(rows)] * SNIPPET_HOP_SECONDS,
                      MAX_MUSIC_SECONDS)


def check_outputs(video_ids: list[str], start: np.ndarray, end: np.ndarray,
                   moment: np.ndarray, scores: np.ndarray | None = None) -> None:
    """Refuse non-finite results, naming the videos (the best moment is always present)."""
    columns = [start[:, 0], end[:, 0], moment[:, 0]]
    if scores is not None:
        columns.append(np.asarray(scores, np.float64))
    require_finite(video_ids, ~np.isfinite(np.column_stack(columns)).all(axis=1), "video")


def moment_lengths(frame: pd.DataFrame, source: FeatureSource) -> np.ndarray:
    """Seconds of each video (the moment's length): from the frame's columns
    (:func:`mgsv_sk.data.video_durations`: > 0, at most 240 s), else the number of valid
    frames (1 fps)."""
    if has_video_durations(frame):
        return video_durations(frame)
    return source.video_lengths(frame["video_id"]).astype(np.float64)

"""Predictions as JSON lines, in the moment-retrieval tooling's convention.

One JSON object per video, one object per line, in the shape the QVHighlights /
moment_detr tooling reads (``pred_relevant_windows``: ``[start, end, score]`` in seconds)::

    {"video_id": "100000000000",
     "pred_music_ids": ["3+k2...", "7+ab..."],       # ranked, best first
     "pred_music_scores": [0.83, 0.41],              # retrieval score of each track
     "pred_relevant_windows": [[12.5, 40.0, 0.97]],  # the moment on pred_music_ids[0]
     "pred_windows_by_music": [[[12.5, 40.0, 0.97]], [[0.0, 27.5, 0.64]]]}

- ``pred_music_ids`` / ``pred_music_scores``: the ranked tracks (MsG ``rank``: the top k;
  MsG ``predict``: the retrieved track; SmG: the given track) and their retrieval scores.
- ``pred_relevant_windows``: the windows on the **first** track, ``[start, end,
  moment_score]`` in seconds, best first: one, or up to m from ``predict`` / ``rank``
  with ``moments_per_track=m`` (their ``windows`` column).
- ``pred_windows_by_music``: the windows on every track, aligned with ``pred_music_ids``.

Ids are strings, numbers plain JSON floats (never NaN: a non-finite value is refused),
and a file is written atomically (temporary file beside it, then renamed).

This module needs numpy and pandas only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from mgsv_sk.errors import ArtifactNotFoundError, InvalidInputError, InvalidTypeError

__all__ = [
    "JSONL_KEYS",
    "predictions_to_jsonl",
    "predictions_to_records",
    "read_jsonl",
    "records_to_frame",
    "write_text_atomic",
]

#: Keys of every JSON line, in order.
JSONL_KEYS: tuple[str, ...] = (
    "video_id",
    "pred_music_ids",
    "pred_music_scores",
    "pred_relevant_windows",
    "pred_windows_by_music",
)
_FRAME_COLUMNS = ("video_id", "rank", "music_id", "score", "start", "end", "moment_score")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _finite(value: Any, what: str) -> float:
    out = float(value)
    if not math.isfinite(out):
        raise InvalidInputError(f"{what} is {out}; JSON lines hold finite numbers only")
    return out


def _with_video_ids(predictions: pd.DataFrame, video_ids: Iterable[Any] | None) -> pd.DataFrame:
    """A ``predict``-shaped frame (one row per video) with a ``video_id`` column."""
    frame = predictions.reset_index(drop=True)
    if video_ids is not None:
        ids = [str(v) for v in video_ids]
        if len(ids) != len(frame):
            raise InvalidInputError(f"video_ids has {len(ids)} ids for {len(frame)} prediction "
                                    f"rows; "
                             "pass one id per row, in the rows' order")
        frame = frame.assign(video_id=ids)
    elif "video_id" not in frame.columns:
        raise InvalidInputError("predictions have no 'video_id' column: pass video_ids= (e.g. "
                         "X['video_id'] of the frame given to predict)")
    return frame.assign(rank=1)


def predictions_to_records(
    predictions: pd.DataFrame, *, video_ids: Iterable[Any] | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready dict per video (keys :data:`JSONL_KEYS`), videos in first-seen order.

    Parameters
    ----------
    predictions : DataFrame
        Either ``rank``'s output (columns ``video_id``, ``rank``, ``music_id``, ``score``,
        ``start``, ``end``, ``moment_score``; k rows per video) or ``predict``'s output
        (``music_id``, ``start``, ``end``, ``score``, ``moment_score``; one row per video)
        with a ``video_id`` column or ``video_ids`` given; with a ``windows`` column
        (``moments_per_track > 1``) every moment of a track is written, best first.
    video_ids : iterable, optional
        The video of each row of a ``predict`` frame (which is indexed like its ``X`` and
        has no ``video_id`` column).

    Returns
    -------
    list of dict

    Examples
    --------
    >>> pred = pd.DataFrame({"music_id": ["m1"], "start": [2.5], "end": [20.0],
    ...                      "score": [0.8], "moment_score": [0.9]})
    >>> predictions_to_records(pred, video_ids=[7])[0]["pred_relevant_windows"]
    [[2.5, 20.0, 0.9]]
    """
    if not isinstance(predictions, pd.DataFrame):
        raise InvalidTypeError(f"predictions must be a DataFrame from predict or rank, got "
                        f"{type(predictions).__name__}")
    if "rank" in predictions.columns:
        if video_ids is not None:
            raise InvalidInputError("video_ids= is for predict frames; a rank frame has video_id")
        frame = predictions.reset_index(drop=True)
    else:
        frame = _with_video_ids(predictions, video_ids)
    missing = [c for c in _FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"predictions lack column(s) {missing}; expected the output of "
                         "predict (music_id, start, end, score, moment_score) or rank")
    frame = frame.assign(video_id=frame["video_id"].astype(str))
    order = list(dict.fromkeys(frame["video_id"]))
    frame = frame.sort_values("rank", kind="stable")  # best first within each video
    groups = {key: part for key, part in frame.groupby("video_id", sort=False)}
    return [_record(vid, groups[vid]) for vid in order]


def _record(video_id: str, rows: pd.DataFrame) -> dict[str, Any]:
    ids = [str(m) for m in rows["music_id"]]
    where = f"video {video_id!r}"
    scores = [_finite(s, f"score of {where}") for s in rows["score"]]
    per_track = (rows["windows"].tolist() if "windows" in rows.columns
                 else [[[s, e, c]] for s, e, c in zip(rows["start"], rows["end"],
                                                     rows["moment_score"])])
    windows = [
        [[_finite(s, f"start of {where}"), _finite(e, f"end of {where}"),
          _finite(c, f"moment_score of {where}")] for s, e, c in track]
        for track in per_track
    ]
    return {
        "video_id": video_id,
        "pred_music_ids": ids,
        "pred_music_scores": scores,
        "pred_relevant_windows": windows[0],
        "pred_windows_by_music": windows,
    }


def predictions_to_jsonl(
    predictions: pd.DataFrame,
    path_or_buffer: str | os.PathLike[str] | IO[str],
    *,
    video_ids: Iterable[Any] | None = None,
) -> int:
    """Write ``predict`` or ``rank`` output as JSON lines (format: module docstring).

    A path is written atomically: to a temporary file beside it, renamed into place once
    complete. A text buffer is written to directly.

    Returns
    -------
    int
        The number of lines (videos) written.
    """
    records = predictions_to_records(predictions, video_ids=video_ids)
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    if isinstance(path_or_buffer, (str, os.PathLike)):
        write_text_atomic(path_or_buffer, text)
    else:
        path_or_buffer.write(text)
    return len(records)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, renamed into place:
    a reader sees the old file or the complete new one, never a partial one."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path!s} is a folder; give a file name")
    if not path.parent.is_dir():
        raise ArtifactNotFoundError(f"folder {path.parent!s} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_record(obj: Any, line: int, where: str) -> dict[str, Any]:
    def fail(problem: str) -> ValueError:
        return ValueError(f"{where} line {line}: {problem}")

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in JSONL_KEYS[:4] if k not in obj]
    if missing:
        raise fail(f"missing key(s) {missing}")
    ids, scores = obj["pred_music_ids"], obj["pred_music_scores"]
    if not isinstance(ids, list) or not isinstance(scores, list) or len(ids) != len(scores):
        raise fail("pred_music_ids and pred_music_scores must be lists of equal length")
    by_music = obj.get("pred_windows_by_music")
    if by_music is not None and (not isinstance(by_music, list) or len(by_music) != len(ids)):
        raise fail("pred_windows_by_music must be a list aligned with pred_music_ids")
    for window in obj["pred_relevant_windows"]:
        if not isinstance(window, list) or len(window) != 3:
            raise fail(f"a window is [start, end, score], got {window!r}")
    return obj


def read_jsonl(path_or_buffer: str | os.PathLike[str] | IO[str]) -> list[dict[str, Any]]:
    """Read prediction JSON lines (blank lines skipped), checking each object's keys.

    Examples
    --------
    >>> import io
    >>> buf = io.StringIO()
    >>> rows = pd.DataFrame({"video_id": ["v"], "music_id": ["m"], "start": [0.0],
    ...                      "end": [9.5], "score": [0.4], "moment_score": [0.7]})
    >>> predictions_to_jsonl(rows, buf)
    1
    >>> read_jsonl(io.StringIO(buf.getvalue()))[0]["pred_music_ids"]
    ['m']
    """
    if isinstance(path_or_buffer, (str, os.PathLike)):
        where = str(path_or_buffer)
        if not Path(path_or_buffer).is_file():
            raise ArtifactNotFoundError(f"JSON lines file not found: {where}")
        text = Path(path_or_buffer).read_text(encoding="utf-8")
    else:
        where = "JSON lines"
        text = path_or_buffer.read()
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{where} line {number}: not valid JSON ({exc.msg})") from exc
        records.append(_check_record(obj, number, where))
    return records


def records_to_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """JSON-lines records back to a ``rank``-shaped frame: one row per (video, track),
    columns ``video_id``, ``rank``, ``music_id``, ``score``, ``start``, ``end``,
    ``moment_score`` (the first window on each track; without
    ``pred_windows_by_music``, only the first track has a moment, the others NaN)."""
    rows: list[tuple[Any, ...]] = []
    for rec in records:
        by_music = rec.get("pred_windows_by_music")
        for i, (mid, score) in enumerate(zip(rec["pred_music_ids"], rec["pred_music_scores"])):
            windows = by_music[i] if by_music is not None else (
                rec["pred_relevant_windows"] if i == 0 else [])
            start, end, conf = windows[0] if windows else (np.nan, np.nan, np.nan)
            rows.append((str(rec["video_id"]), i + 1, str(mid), float(score), float(start),
                         float(end), float(conf)))
    frame = pd.DataFrame(rows, columns=list(_FRAME_COLUMNS))
    frame["rank"] = frame["rank"].astype(np.int64)
    return frame


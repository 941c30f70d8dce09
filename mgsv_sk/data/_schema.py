"""The MGSV-EC annotation schema: column names, reading and validation.

Every problem found in a frame is gathered into one :class:`AnnotationError`, so a
user fixes a CSV in one round instead of one exception at a time.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mgsv_sk.data.spans import MAX_MUSIC_SECONDS, SNIPPET_HOP_SECONDS
from mgsv_sk.errors import InvalidInputError, InvalidTypeError

__all__ = [
    "ANNOTATION_COLUMNS",
    "AnnotationError",
    "FIT_COLUMNS",
    "GROUND_TRUTH_COLUMNS",
    "MAX_MOMENT_SECONDS",
    "PREDICT_COLUMNS",
    "MAX_ID_LENGTH",
    "check_trainable_moments",
    "check_unique_columns",
    "id_text",
    "id_problem",
    "validate_annotations",
    "has_video_durations",
    "video_durations",
]

#: The 16 columns of the MGSV-EC release CSVs, in release order.
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "video_id",
    "music_id",
    "video_start",
    "video_end",
    "music_start",
    "music_end",
    "music_total_duration",
    "video_segment_duration",
    "music_segment_duration",
    "music_path",
    "video_total_duration",
    "video_width",
    "video_height",
    "video_total_frames",
    "video_frame_rate",
    "video_category",
)

#: What evaluation needs to know about the ground truth of a row.
GROUND_TRUTH_COLUMNS: tuple[str, ...] = (
    "video_id",
    "music_id",
    "music_start",
    "music_end",
    "music_total_duration",
)
#: What training needs (the ground truth, nothing else).
FIT_COLUMNS = GROUND_TRUTH_COLUMNS
#: What prediction needs at the least (MsG: no music_id; SmG adds it).
PREDICT_COLUMNS: tuple[str, ...] = ("video_id",)

ID_COLUMNS = ("video_id", "music_id")
_TIME_COLUMNS = (
    "video_start",
    "video_end",
    "music_start",
    "music_end",
    "music_total_duration",
    "video_segment_duration",
    "music_segment_duration",
    "video_total_duration",
)
#: Music features cover the first 240 s of a track (96 snippets of 2.5 s); the protocol
#: cuts ground-truth moments there (mirrors ``mgsv_sk.data.spans.MAX_MUSIC_SECONDS``).
MAX_MOMENT_SECONDS = MAX_MUSIC_SECONDS  # the features stop there
# The release rounds times to the millisecond; a moment may end a hair past the track.
_END_TOLERANCE_S = 0.05
_MAX_EXAMPLES = 5
#: The longest id, in UTF-8 bytes: ``<id>.pt`` must fit a file name (255 bytes).
MAX_ID_LENGTH = 200


def id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a ``video_id``/``music_id``, or None when it can.

    Ids are data, not paths: ``<id>.pt`` must name one file inside its folder of the
    feature tree. So an id is a non-empty string of at most :data:`MAX_ID_LENGTH` UTF-8
    bytes, with no path separator (``/`` or ``\\``), no NUL or other control character,
    that is not ``.``/``..`` and does not start with ``..``. Letters, digits and
    punctuation such as ``+ - _ . = ~ @`` are fine (``112712471153``,
    ``7+5x4mjjeiubm49fg``).
    """
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if value == "":
        return "is empty"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode text (holds a lone surrogate)"
    if size > MAX_ID_LENGTH:
        return f"is {size} bytes long, more than the {MAX_ID_LENGTH} allowed"
    if "/" in value or "\\" in value:
        return "contains a path separator ('/' or '\\')"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return "contains a NUL or other control character"
    if value in (".", "..") or value.startswith(".."):
        return "is '.' or '..' or starts with '..'"
    return None


def _id_rule_message(column: str, bad: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{v[:60]!r}{'...' if len(v) > 60 else ''} {why}" for v, why in
                      bad[:_MAX_EXAMPLES])
    more = f" and {len(bad) - _MAX_EXAMPLES} more" if len(bad) > _MAX_EXAMPLES else ""
    return (f"column {column!r} has {len(bad)} invalid id(s) ({shown}{more}); an id names "
            f"one feature file: a non-empty string of at most {MAX_ID_LENGTH} bytes without "
            "'/', '\\', control characters or a leading '..'")


class AnnotationError(InvalidInputError):
    """An annotation frame breaks the MGSV-EC schema; ``problems`` lists each finding."""

    def __init__(self, problems: Sequence[str], source: str = "annotations") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{source} failed validation with {len(self.problems)} problem(s):\n{lines}"
        )


def _examples(values: Iterable[object]) -> str:
    items = [v.item() if isinstance(v, np.generic) else v for v in values]  # 3, not np.int64(3)
    shown = ", ".join(repr(v) for v in items[:_MAX_EXAMPLES])
    more = f" and {len(items) - _MAX_EXAMPLES} more" if len(items) > _MAX_EXAMPLES else ""
    return f"{shown}{more}"


def id_text(value: object) -> tuple[str | None, str | None]:
    """The id a cell stands for, as the string it was written as: ``(text, None)``, or
    ``(None, why)`` when it cannot be one. One rule for every reader (CSV, frame, list).

    Strings are kept exactly (``"NA"``, ``"null"`` and ``" 7"`` are ids); integers are
    their digits; a float column (pandas reads an integer column with a gap as floats)
    must hold whole, finite numbers, written as integers (``7.0`` -> ``"7"``).
    """
    if isinstance(value, str):
        return value, None
    if value is None or value is pd.NA or value is pd.NaT:
        return None, "is empty"
    if isinstance(value, (bool, np.bool_)):
        return None, f"is a boolean ({value}), not an id"
    if isinstance(value, (int, np.integer)):
        return str(int(value)), None
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return None, "is empty"
        if not np.isfinite(value):
            return None, "holds inf or other non-finite numbers"
        if value != np.round(value):
            return None, "holds fractional numbers"
        return str(int(value)), None
    if isinstance(value, bytes):
        return None, "is bytes, not text: decode it first"
    return None, f"is a {type(value).__name__}, not a string"


def _ids_as_strings(column: pd.Series, name: str, problems: list[str]) -> pd.Series:
    """Ids are strings: the release CSVs hold integer video ids, which must not become
    floats; empty cells, inf, fractions and other objects are reported, never cast."""
    texts, empty, other = [], [], []
    for row, value in enumerate(column.tolist()):
        text, why = id_text(value)
        texts.append(text)
        if why == "is empty":
            empty.append(row)
        elif why is not None:
            other.append((row, why))
    if empty:
        problems.append(
            f"column {name!r} has {len(empty)} empty value(s) (rows {_examples(empty)}); "
            "every row needs an id"
        )
    for why in dict.fromkeys(w for _, w in other):  # one line per kind of problem
        rows = [r for r, w in other if w == why]
        problems.append(f"column {name!r} {why}; ids must be strings (or whole numbers, "
                        f"written as integers): rows {_examples(rows)}")
    return pd.Series(texts, index=column.index, dtype=object)


def check_unique_columns(columns: Sequence[object], source: str) -> None:
    """Refuse duplicated column labels, naming them (pandas would silently pick one, or
    fail with its own error)."""
    seen: dict[str, int] = {}
    for c in columns:
        seen[str(c)] = seen.get(str(c), 0) + 1
    repeated = [c for c, n in seen.items() if n > 1]
    if repeated:
        raise AnnotationError(
            [f"column {c!r} appears {seen[c]} times; keep one column of each name" for c in
             repeated], source)


def _suggest(missing: str, present: Sequence[str]) -> str:
    # Only columns the schema does not know can be a misspelling ('music_id' is not one
    # of 'music_end').
    unknown = [c for c in present if c not in ANNOTATION_COLUMNS]
    close = difflib.get_close_matches(missing, unknown, n=1, cutoff=0.75)
    return f" (found {close[0]!r}: misspelt?)" if close else ""


def validate_annotations(
    frame: pd.DataFrame,
    required: Sequence[str] = FIT_COLUMNS,
    *,
    source: str = "annotations",
    keep_duplicates: bool = False,
) -> pd.DataFrame:
    """Check an MGSV-EC frame and return a clean copy with string ids and float times.

    Parameters
    ----------
    frame : DataFrame
        One row per video, columns as in :data:`ANNOTATION_COLUMNS` (extra columns kept).
    required : sequence of str
        Columns that must be present (e.g. :data:`FIT_COLUMNS` for training).
    source : str
        Name used in error messages (a file name, say).
    keep_duplicates : bool
        Keep every row, repeated or not (a prediction frame: each row is a query, the
        same video may be asked about several tracks). By default (annotations to train
        on) exact duplicate rows are dropped and rows of one video that disagree are
        refused.

    Returns
    -------
    DataFrame
        A copy with ``video_id``/``music_id`` as strings and time columns as float64,
        index reset to ``0..n-1``.

    Raises
    ------
    AnnotationError
        Listing every problem: missing columns, empty frame, NaN/inf or negative times,
        ``music_end <= music_start``, a moment past the track, conflicting duplicates.

    Examples
    --------
    >>> df = pd.DataFrame({"video_id": [1], "music_id": ["a"], "music_start": [0.0],
    ...                    "music_end": [10.0], "music_total_duration": [60.0]})
    >>> validate_annotations(df).video_id.tolist()
    ['1']
    """
    if not isinstance(frame, pd.DataFrame):
        kind = type(frame)
        got = f"{kind.__module__.split('.')[0]}.{kind.__name__}"
        if hasattr(frame, "__dask_graph__"):
            fix = ("compute it first (X.compute()), or predict it partition by partition with "
                   "mgsv_sk.export.dask.predict_dask(ddf, bundle, features)")
        elif hasattr(frame, "to_pandas"):
            fix = "convert it with X.to_pandas()"
        elif isinstance(frame, (dict, list)):
            fix = "build one with pandas.DataFrame(X)"
        else:
            fix = "read the CSV with mgsv_sk.read_annotations(path)"
        raise InvalidTypeError(
            f"{source}: expected a pandas DataFrame in the MGSV-EC schema, got {got}; {fix}")
    check_unique_columns(list(frame.columns), source)
    problems: list[str] = []
    present = [str(c) for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    for name in missing:
        problems.append(f"missing column {name!r}{_suggest(name, present)}")
    if len(frame) == 0:
        problems.append("the frame has no rows")
    if problems:
        raise AnnotationError(problems, source)

    out = frame.copy()
    for name in ID_COLUMNS:
        if name in out.columns:
            out[name] = _ids_as_strings(out[name], name, problems)
            bad = [(v, why) for v in pd.unique(out[name].dropna())
                   for why in [id_problem(v)] if why is not None]
            if bad:
                problems.append(_id_rule_message(name, bad))
    for name in _TIME_COLUMNS:
        if name not in out.columns:
            continue
        values = pd.to_numeric(out[name], errors="coerce")
        bad_type = values.isna() & out[name].notna()
        if bad_type.any():
            rows = np.flatnonzero(bad_type.to_numpy())
            problems.append(
                f"column {name!r} has non-numeric values (rows {_examples(rows)}); "
                "times are seconds as numbers"
            )
        out[name] = values.astype("float64")
        arr = out[name].to_numpy()
        nonfinite = ~np.isfinite(arr) & ~bad_type.to_numpy()  # non-numeric: reported above
        if nonfinite.any():
            problems.append(
                f"column {name!r} has {int(nonfinite.sum())} NaN/inf value(s) "
                f"(rows {_examples(np.flatnonzero(nonfinite))}); fill or drop those rows"
            )
        negative = arr < 0
        if negative.any():
            problems.append(
                f"column {name!r} has {int(negative.sum())} negative time(s) "
                f"(rows {_examples(np.flatnonzero(negative))}); times are seconds >= 0"
            )
    _check_moments(out, problems)
    if not keep_duplicates:
        out = _drop_duplicates(out, problems)
    if problems:
        raise AnnotationError(problems, source)
    return out.reset_index(drop=True)


def _check_moments(out: pd.DataFrame, problems: list[str]) -> None:
    if "music_start" in out.columns and "music_end" in out.columns:
        start = out["music_start"].to_numpy()
        end = out["music_end"].to_numpy()
        with np.errstate(invalid="ignore"):
            inverted = end <= start
        if inverted.any():
            rows = np.flatnonzero(inverted)
            problems.append(
                f"{len(rows)} row(s) have music_end <= music_start (rows {_examples(rows)}); "
                "a moment needs a positive length"
            )
        if "music_total_duration" in out.columns:
            total = out["music_total_duration"].to_numpy()
            with np.errstate(invalid="ignore"):
                beyond = end > total + _END_TOLERANCE_S
            if beyond.any():
                rows = np.flatnonzero(beyond)
                problems.append(
                    f"{len(rows)} moment(s) end after their track (music_end > "
                    f"music_total_duration, rows {_examples(rows)}); check the times' units"
                )
    if "video_start" in out.columns and "video_end" in out.columns:
        with np.errstate(invalid="ignore"):
            inverted = out["video_end"].to_numpy() <= out["video_start"].to_numpy()
        if inverted.any():
            rows = np.flatnonzero(inverted)
            problems.append(
                f"{len(rows)} row(s) have video_end <= video_start (rows {_examples(rows)})"
            )


def _drop_duplicates(out: pd.DataFrame, problems: list[str]) -> pd.DataFrame:
    if "video_id" not in out.columns:
        return out
    out = out.drop_duplicates()
    dup = out["video_id"].duplicated(keep=False) & out["video_id"].notna()
    if dup.any():
        ids = pd.unique(out.loc[dup, "video_id"])
        problems.append(
            f"{len(ids)} video_id(s) appear in several rows that disagree "
            f"({_examples(ids)}); keep one row per video"
        )
    return out


def has_video_durations(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` says how long its videos are (:func:`video_durations` reads it)."""
    return "video_segment_duration" in frame.columns or (
        "video_start" in frame.columns and "video_end" in frame.columns)


def video_durations(frame: pd.DataFrame) -> np.ndarray:
    """Seconds of each video's used segment, shape (n,): the length of the music moment
    that plays under it.

    ``video_segment_duration`` when present, else ``video_end - video_start``; the
    moment's length equals this in MGSV-EC. A length over the :data:`MAX_MOMENT_SECONDS`
    of music the features cover is taken as that (no moment of a track can be longer);
    a length of 0 or less is refused, naming the rows.
    """
    if "video_segment_duration" in frame.columns:
        seconds = frame["video_segment_duration"].to_numpy(dtype=np.float64)
        named = "video_segment_duration"
    elif "video_start" in frame.columns and "video_end" in frame.columns:
        seconds = (frame["video_end"] - frame["video_start"]).to_numpy(dtype=np.float64)
        named = "video_end - video_start"
    else:
        raise AnnotationError(
            ["no video duration: add 'video_segment_duration' or 'video_start' and 'video_end'"]
        )
    empty = ~(seconds > 0)  # NaN too
    if empty.any():
        rows = np.flatnonzero(empty)
        raise AnnotationError([
            f"{len(rows)} video(s) have no length ({named} <= 0 or missing, rows "
            f"{_examples(rows)}); a video's length is the moment's, in seconds > 0"])
    return np.minimum(seconds, MAX_MOMENT_SECONDS)


def check_trainable_moments(frame: pd.DataFrame, source: str = "X") -> None:
    """Training-only checks of a validated frame's moments against the 240 s the music
    features cover.

    A moment that *starts* at or after 240 s lies wholly outside the features and cannot
    be learnt: :class:`AnnotationError`. A moment that *ends* after 240 s is cut there, as
    the protocol's evaluation does, with a ``UserWarning`` (evaluation accepts both: such
    ground truth is cut, or scores IoU 0 when nothing is left).
    """
    start = frame["music_start"].to_numpy(dtype=np.float64)
    end = frame["music_end"].to_numpy(dtype=np.float64)
    outside = start >= MAX_MOMENT_SECONDS
    if outside.any():
        rows = np.flatnonzero(outside)
        raise AnnotationError(
            [f"{len(rows)} moment(s) start at or after {MAX_MOMENT_SECONDS:g} s (rows "
             f"{_examples(rows)}), past the music features (the first 240 s of a track); "
             "drop those rows or re-cut the moments"],
            source,
        )
    cut = end > MAX_MOMENT_SECONDS
    if cut.any():
        rows = np.flatnonzero(cut)
        warnings.warn(
            f"{len(rows)} moment(s) end after {MAX_MOMENT_SECONDS:g} s (rows "
            f"{_examples(rows)}); they are trained as ending at {MAX_MOMENT_SECONDS:g} s, "
            "where the music features and the protocol stop",
            UserWarning, stacklevel=3,
        )


def check_moments_on_features(frame: pd.DataFrame, snippets: Mapping[str, int],
                              source: str = "X") -> None:
    """Training-only check of a validated frame's moments against what each track's
    features cover (``snippets[music_id]`` snippets of 2.5 s; at most 240 s).

    ``music_total_duration`` is the annotation's word; the features are what the model
    reads. A moment starting at or after its track's last feature is not in the features
    at all: :class:`AnnotationError` (they were extracted from a shorter file, or cut).
    One ending more than a snippet past them is trained on the part they cover, with a
    ``UserWarning``.
    """
    ids = frame["music_id"].tolist()
    extent = np.minimum(np.array([snippets[m] for m in ids], dtype=np.float64)
                        * SNIPPET_HOP_SECONDS, MAX_MOMENT_SECONDS)
    start = frame["music_start"].to_numpy(dtype=np.float64)
    end = frame["music_end"].to_numpy(dtype=np.float64)
    outside = start >= extent
    if outside.any():
        rows = np.flatnonzero(outside)
        r = int(rows[0])
        raise AnnotationError(
            [f"{len(rows)} moment(s) start at or after the end of their track's music "
             f"features (rows {_examples(rows)}; e.g. row {r}: track {ids[r]!r} has "
             f"{snippets[ids[r]]} snippet(s), {extent[r]:g} s of features, and its moment "
             f"starts at {start[r]:g} s, though music_total_duration says "
             f"{float(frame['music_total_duration'].iloc[r]):g} s); re-extract those tracks' "
             "features from the whole file, or drop those rows"],
            source,
        )
    past = end > extent + SNIPPET_HOP_SECONDS
    if past.any():
        rows = np.flatnonzero(past)
        warnings.warn(
            f"{len(rows)} moment(s) end more than a snippet after their track's music "
            f"features (rows {_examples(rows)}); they are trained on the part the features "
            "cover. Re-extract those tracks' features from the whole file to train on all "
            "of it", UserWarning, stacklevel=3,
        )

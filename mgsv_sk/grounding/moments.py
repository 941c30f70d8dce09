"""From a head's candidate windows to the moments a grounder returns.

Both backends run their moment head (torch or an ONNX graph) to the same per-candidate
outputs, start / end in seconds and a logit per candidate (-inf where a candidate is not a
window of the track), and pick the moments here, so the choice exists once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mgsv_sk.errors import InvalidInputError

__all__ = ["check_moments", "on_tracks", "select_windows", "sigmoid", "window_lists"]


def check_moments(moments_per_track: Any) -> int:
    """``moments_per_track`` as an int, or a ValueError naming it."""
    if (isinstance(moments_per_track, bool)
            or not isinstance(moments_per_track, (int, np.integer)) or moments_per_track < 1):
        raise InvalidInputError(f"moments_per_track must be a positive integer, got "
                         f"{moments_per_track!r}")
    return int(moments_per_track)


def window_lists(start: np.ndarray, end: np.ndarray,
                 score: np.ndarray) -> list[list[list[float]]]:
    """Per row, the ``[start, end, score]`` of (n, m) NaN-padded arrays, best first: the
    ``windows`` column of a prediction."""
    return [[[float(a), float(b), float(c)] for a, b, c in zip(*row) if np.isfinite(a)]
            for row in zip(start, end, score)]


def on_tracks(start: np.ndarray, end: np.ndarray, track: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Moments (n, m) moved onto their track (``track``: (n,) seconds): a moment ending
    past the track slides back to end with it, keeping its length where the track is long
    enough, and is cut to the whole track where it is not (a track shorter than the
    video). NaN padding stays NaN; ``track`` None changes nothing.

    Examples
    --------
    >>> s, e = on_tracks(np.array([[0.0], [8.0]]), np.array([[20.0], [12.0]]),
    ...                  np.array([2.5, 10.0]))
    >>> s.ravel().tolist(), e.ravel().tolist()
    ([0.0, 6.0], [2.5, 10.0])
    """
    if track is None:
        return start, end
    limit = np.asarray(track, np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        shift = np.maximum(end - limit, 0.0)
        new_start = np.maximum(start - shift, 0.0)
        new_end = np.minimum(new_start + (end - start), limit)
    return new_start, new_end


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings (exp of a negative number only)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def select_windows(
    starts: np.ndarray, ends: np.ndarray, logits: np.ndarray, moments: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``moments`` non-overlapping windows per row, best first (greedy: take the
    best remaining candidate, drop every candidate that overlaps it, repeat).

    Parameters
    ----------
    starts, ends : ndarray (n, K)
        Candidate windows in seconds.
    logits : ndarray (n, K)
        Candidate logits; -inf (or NaN) marks a candidate that is not a window. Ties go to
        the lower candidate index.
    moments : int
        How many windows to return per row (>= 1).

    Returns
    -------
    start, end, score : ndarray (n, moments), float64
        ``score`` is sigmoid(logit), the moment score. Rows with fewer windows than
        ``moments`` are padded with NaN.

    Examples
    --------
    >>> s = np.array([[0.0, 5.0, 10.0, 20.0]])
    >>> start, end, score = select_windows(s, s + 10, np.array([[1.0, 3.0, 2.0, 0.0]]), 3)
    >>> start.tolist(), end.tolist()
    ([[5.0, 20.0, nan]], [[15.0, 30.0, nan]])
    """
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    n = logits.shape[0]
    out = [np.full((n, moments), np.nan) for _ in range(3)]
    alive = np.isfinite(logits)
    rows = np.arange(n)
    for j in range(moments):
        has = alive.any(axis=1)
        if not has.any():
            break
        best = np.argmax(np.where(alive, logits, -np.inf), axis=1)  # first of ties
        b_start, b_end = starts[rows, best], ends[rows, best]
        for col, value in zip(out, (b_start, b_end, sigmoid(logits[rows, best]))):
            col[has, j] = value[has]
        overlap = (starts < b_end[:, None]) & (ends > b_start[:, None])
        alive &= ~overlap
        alive[rows, best] = False  # an empty window overlaps nothing, itself included
    return out[0], out[1], out[2]

"""Span geometry of the MGSV protocol: small, elementwise, pure numpy functions.

A span is a row ``(start, end)`` in seconds or ``(center, width)`` normalised by
:data:`MAX_MUSIC_SECONDS`. Every function here works row by row with ``np.minimum`` /
``np.maximum`` style arithmetic only, so that a torch twin can mirror it line for line and be
parity-tested against it.

The per-sample IoU follows the public evaluation code (see ``MGSV.md`` section 4): the
prediction's start is clamped to ``>= 0`` and its end to ``<= 240 s`` and then to ``<=`` the
track duration; the ground truth is ``(music_start, min(music_end, 240))``; the IoU is 0 where
the ground truth is empty or the union is not positive.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mgsv_sk.errors import InvalidInputError

__all__ = [
    "MAX_MUSIC_SECONDS",
    "MAX_MUSIC_SNIPPETS",
    "MAX_VIDEO_FRAMES",
    "SNIPPET_HOP_SECONDS",
    "clamp_prediction",
    "cw_to_se",
    "ground_truth_span",
    "se_to_cw",
    "span_lengths",
    "temporal_iou",
]

#: Tracks are cut at this many seconds; normalised spans are in units of it.
MAX_MUSIC_SECONDS: float = 240.0
#: Music snippet ``k`` is centred at ``SNIPPET_HOP_SECONDS * k`` seconds.
SNIPPET_HOP_SECONDS: float = 2.5
#: Video features hold at most this many frames (1 frame per second).
MAX_VIDEO_FRAMES: int = 50
#: Music features hold this many snippets (``MAX_MUSIC_SECONDS / SNIPPET_HOP_SECONDS``).
MAX_MUSIC_SNIPPETS: int = 96

FloatArray = npt.NDArray[np.float64]


def _as_pairs(x: npt.ArrayLike, name: str, *, finite: bool) -> FloatArray:
    """Return ``x`` as a float64 array of shape ``(n, 2)`` or raise a clear ``ValueError``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InvalidInputError(
            f"{name} must have shape (n, 2) (one (start, end) or (center, width) row per "
            f"sample); got shape {arr.shape}. Stack the two columns, e.g. "
            f"np.column_stack([start, end])."
        )
    if finite:
        _check_finite(arr, name)
    return arr


def _as_vector(x: npt.ArrayLike, name: str, n: int) -> FloatArray:
    """Return ``x`` as a float64 array of shape ``(n,)``; a scalar is broadcast to ``(n,)``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise InvalidInputError(
            f"{name} must have shape ({n},) (one value per row) or be a scalar; "
            f"got shape {arr.shape}."
        )
    _check_finite(arr, name)
    return arr


def _check_finite(arr: FloatArray, name: str) -> None:
    """Raise a ``ValueError`` naming ``name`` if ``arr`` holds NaN or inf."""
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))
        raise InvalidInputError(
            f"{name} holds NaN or inf values in {len(rows)} row(s) (first: row {rows[0]}); "
            f"drop or repair those rows before evaluating."
        )


def cw_to_se(cw: npt.ArrayLike, scale: float = MAX_MUSIC_SECONDS) -> FloatArray:
    """Convert normalised ``(center, width)`` spans to ``(start, end)`` seconds.

    Parameters
    ----------
    cw : array-like of shape (n, 2)
        Spans as ``(center, width)`` in units of ``scale`` (the model's output).
    scale : float, default=240.0
        Seconds per unit, :data:`MAX_MUSIC_SECONDS`.

    Returns
    -------
    se : ndarray of shape (n, 2), float64
        ``(center - width / 2, center + width / 2) * scale``; no clamping.

    Examples
    --------
    >>> cw_to_se([[0.5, 0.25], [0.1, 0.0]])
    array([[ 90., 150.],
           [ 24.,  24.]])
    """
    arr = _as_pairs(cw, "cw", finite=False)
    center, width = arr[:, 0], arr[:, 1]
    return np.stack([center - 0.5 * width, center + 0.5 * width], axis=1) * scale


def se_to_cw(se: npt.ArrayLike, scale: float = MAX_MUSIC_SECONDS) -> FloatArray:
    """Convert ``(start, end)`` seconds to normalised ``(center, width)``; inverse of `cw_to_se`.

    Parameters
    ----------
    se : array-like of shape (n, 2)
        Spans as ``(start, end)`` in seconds.
    scale : float, default=240.0
        Seconds per unit, :data:`MAX_MUSIC_SECONDS`.

    Returns
    -------
    cw : ndarray of shape (n, 2), float64
        ``((start + end) / 2, end - start) / scale``.

    Examples
    --------
    >>> se_to_cw([[90.0, 150.0], [0, 24]])
    array([[0.5 , 0.25],
           [0.05, 0.1 ]])
    """
    arr = _as_pairs(se, "se", finite=False)
    start, end = arr[:, 0], arr[:, 1]
    return np.stack([0.5 * (start + end), end - start], axis=1) / scale


def span_lengths(se: npt.ArrayLike) -> FloatArray:
    """Length of each ``(start, end)`` span, 0 for inverted spans.

    Parameters
    ----------
    se : array-like of shape (n, 2)
        Spans as ``(start, end)``.

    Returns
    -------
    lengths : ndarray of shape (n,), float64
        ``max(end - start, 0)``.

    Examples
    --------
    >>> span_lengths([[10, 25], [30, 20]])
    array([15.,  0.])
    """
    arr = _as_pairs(se, "se", finite=False)
    return np.maximum(arr[:, 1] - arr[:, 0], 0.0)


def clamp_prediction(pred: npt.ArrayLike, duration: npt.ArrayLike) -> FloatArray:
    """Clamp predicted spans to the track as the protocol does.

    The start is clamped to ``>= 0``; the end to ``<= 240`` and then to ``<= duration``.
    The start is *not* clamped against the end, so a span entirely past the track end comes
    out inverted (``end < start``) and has length 0 (see `span_lengths`).

    Parameters
    ----------
    pred : array-like of shape (n, 2)
        Predicted ``(start, end)`` in seconds; finite.
    duration : array-like of shape (n,) or scalar
        Track durations in seconds (``music_total_duration``); finite and ``>= 0``.

    Returns
    -------
    clamped : ndarray of shape (n, 2), float64
        A new array; the inputs are not modified.

    Examples
    --------
    >>> clamp_prediction([[-5.0, 30.0], [200.0, 260.0], [130.0, 150.0]], [100, 250, 120])
    array([[  0.,  30.],
           [200., 240.],
           [130., 120.]])
    """
    arr = _as_pairs(pred, "pred", finite=True)
    dur = _as_vector(duration, "duration", len(arr))
    if (dur < 0).any():
        raise InvalidInputError(
            f"duration must be >= 0 seconds; got {int((dur < 0).sum())} negative value(s) "
            f"(min {dur.min()}). Pass music_total_duration in seconds."
        )
    start = np.maximum(arr[:, 0], 0.0)
    end = np.minimum(np.minimum(arr[:, 1], MAX_MUSIC_SECONDS), dur)
    return np.stack([start, end], axis=1)


def ground_truth_span(gt: npt.ArrayLike) -> FloatArray:
    """Ground-truth span of the protocol: ``(music_start, min(music_end, 240))``.

    Parameters
    ----------
    gt : array-like of shape (n, 2)
        ``(music_start, music_end)`` in seconds; finite.

    Returns
    -------
    span : ndarray of shape (n, 2), float64
        A new array with the end cut at :data:`MAX_MUSIC_SECONDS`. The span may be empty
        (``end <= start``), e.g. when the moment starts after 240 s.

    Examples
    --------
    >>> ground_truth_span([[10.0, 30.0], [230.0, 255.0]])
    array([[ 10.,  30.],
           [230., 240.]])
    """
    arr = _as_pairs(gt, "gt", finite=True)
    return np.stack([arr[:, 0], np.minimum(arr[:, 1], MAX_MUSIC_SECONDS)], axis=1)


def temporal_iou(pred: npt.ArrayLike, gt: npt.ArrayLike, duration: npt.ArrayLike) -> FloatArray:
    """Per-row temporal IoU between predicted and ground-truth moments, as the protocol does.

    `clamp_prediction` is applied to ``pred`` and `ground_truth_span` to ``gt``; then
    ``inter = max(0, min(ends) - max(starts))``, ``union = len(pred) + len(gt) - inter``
    with ``len(pred) = max(end - start, 0)``, and ``IoU = inter / union``. The IoU is 0 where
    the ground truth is empty (``end <= start``) or the union is ``<= 0``.

    Parameters
    ----------
    pred : array-like of shape (n, 2)
        Predicted ``(start, end)`` in seconds (e.g. ``cw_to_se(model_output)``); finite.
    gt : array-like of shape (n, 2)
        ``(music_start, music_end)`` in seconds; finite.
    duration : array-like of shape (n,) or scalar
        Track durations in seconds (``music_total_duration``); finite and ``>= 0``.

    Returns
    -------
    iou : ndarray of shape (n,), float64
        Values in ``[0, 1]``.

    Raises
    ------
    ValueError
        If a shape is wrong, a value is NaN or inf, or a duration is negative.

    Examples
    --------
    The third prediction is clamped to ``(0, 10)``; the last lies past the track end:

    >>> pred = [[0, 20], [10, 30], [-10, 10], [70, 90]]
    >>> gt = [[0, 20], [20, 40], [0, 20], [40, 60]]
    >>> temporal_iou(pred, gt, duration=[60, 60, 60, 60]).round(4)
    array([1.    , 0.3333, 0.5   , 0.    ])
    """
    p = clamp_prediction(pred, duration)
    g = ground_truth_span(gt)
    if g.shape != p.shape:
        raise InvalidInputError(
            f"gt must have the same shape as pred, {p.shape}; got shape {g.shape}. "
            f"Pass one ground-truth row per prediction."
        )
    p_len = np.maximum(p[:, 1] - p[:, 0], 0.0)
    g_len = g[:, 1] - g[:, 0]
    inter = np.maximum(np.minimum(p[:, 1], g[:, 1]) - np.maximum(p[:, 0], g[:, 0]), 0.0)
    union = p_len + g_len - inter
    valid = (g_len > 0) & (union > 0)
    return np.where(valid, inter / np.where(valid, union, 1.0), 0.0)

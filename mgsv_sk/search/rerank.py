"""Re-ranking retrieval candidates by the moment head: the one rule every ranking uses.

The retrieval score of a (video, track) pair compares whole-video and whole-track
embeddings; the moment head compares the video's frames with every window of the track.
The second holds up better on tracks never seen in training (``benchmarks/accuracy.py``),
so the final score of a candidate is

    score + moment_weight * logit(moment_score)

for each video's best ``rerank_depth`` tracks by retrieval score; every other track keeps
its retrieval order below them. ``BaseGrounder.rank``, MsG ``predict``,
``decision_function`` (and so the R@k scorers) and the fit's validation all order by this
rule, in both backends.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mgsv_sk.errors import InvalidInputError
from mgsv_sk.search.topk import top_k_indices

__all__ = ["RERANK_MARGIN", "candidates", "check_rerank", "combined_scores", "moment_logit",
           "rerank_count", "rerank_table", "reranked"]

#: How far below the lowest re-ranked score a track outside the re-ranked candidates is
#: placed (its order among the others is kept).
RERANK_MARGIN = 1.0
_EPS = 1e-6


def check_rerank(moment_weight: object, rerank_depth: object) -> tuple[float, int]:
    """Validated ``(moment_weight, rerank_depth)``: a finite weight >= 0 (0: retrieval
    order alone) and a depth >= 1."""
    if (isinstance(moment_weight, bool)
            or not isinstance(moment_weight, (int, float, np.integer, np.floating))
            or not np.isfinite(moment_weight) or moment_weight < 0):
        raise InvalidInputError("moment_weight must be a finite number >= 0 (0 keeps the retrieval "
                         f"order), got {moment_weight!r}")
    if (isinstance(rerank_depth, bool) or not isinstance(rerank_depth, (int, np.integer))
            or rerank_depth < 1):
        raise InvalidInputError(f"rerank_depth must be a positive integer, got {rerank_depth!r}")
    return float(moment_weight), int(rerank_depth)


def moment_logit(moment_score: np.ndarray) -> np.ndarray:
    """logit of a probability, clipped away from 0 and 1 (a score of exactly 0 or 1 must
    not decide a ranking by infinity)."""
    p = np.clip(np.asarray(moment_score, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def combined_scores(retrieval: np.ndarray, moment_score: np.ndarray,
                    moment_weight: float) -> np.ndarray:
    """``retrieval + moment_weight * logit(moment_score)`` (float64); the retrieval score
    itself when the weight is 0."""
    retrieval = np.asarray(retrieval, np.float64)
    if moment_weight == 0:
        return retrieval
    return retrieval + moment_weight * moment_logit(moment_score)


def rerank_table(table: np.ndarray, top: np.ndarray, moment_score: np.ndarray,
                 moment_weight: float) -> np.ndarray:
    """The final score of every (video, track) pair, (n, N) float64.

    ``top`` (n, d) are each video's candidates (its best ``d`` tracks by retrieval score,
    :func:`candidates`) and ``moment_score`` (n, d) the moment head's score of each. The
    candidates hold their combined score; every other track its retrieval score shifted
    to lie :data:`RERANK_MARGIN` below the row's lowest candidate, so the others keep
    their order after every candidate (-inf stays -inf).
    """
    scores = np.asarray(table).astype(np.float64, copy=True)
    n, d = top.shape
    if moment_weight == 0 or d == 0 or n == 0:
        return scores
    retrieval = np.take_along_axis(scores, top, axis=1)
    combined = combined_scores(retrieval, moment_score, moment_weight)
    if d < scores.shape[1]:
        cut = retrieval.min(axis=1, keepdims=True)  # the d-th best retrieval score
        finite = np.where(np.isfinite(combined), combined, np.inf).min(axis=1, keepdims=True)
        floor = np.where(np.isfinite(finite), finite, cut)
        with np.errstate(invalid="ignore"):  # -inf - (-inf): a row with no finite score
            shift = np.where(np.isfinite(cut) & np.isfinite(floor),
                             floor - RERANK_MARGIN - cut, 0.0)
        scores = scores + shift
    np.put_along_axis(scores, top, combined, axis=1)
    return scores


def rerank_count(n_tracks: int, moment_weight: float, depth: int) -> int:
    """How many of each video's tracks are re-ranked: ``min(depth, N)``, 0 when the weight
    is 0."""
    return min(int(depth), int(n_tracks)) if moment_weight > 0 else 0


def candidates(table: np.ndarray, moment_weight: float, depth: int) -> np.ndarray:
    """Each video's re-ranked candidates: its best :func:`rerank_count` tracks by
    retrieval score, best first, (n, d)."""
    d = rerank_count(table.shape[1], moment_weight, depth)
    if d == 0:
        return np.zeros((table.shape[0], 0), np.int64)
    return top_k_indices(table, d)


def reranked(table: np.ndarray, moment_weight: float, depth: int,
             moment_scores: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """:func:`rerank_table` of ``table`` on its :func:`candidates`, the moment scores
    coming from ``moment_scores(video_rows, columns)`` (flat arrays of the candidate
    pairs, (n * d,) each); ``table`` itself when nothing is re-ranked. The grounder and
    the fit's validation both rank through this."""
    top = candidates(table, moment_weight, depth)
    n, d = top.shape
    if d == 0:
        return np.asarray(table)
    moment = np.asarray(moment_scores(np.repeat(np.arange(n), d), top.ravel()))
    return rerank_table(table, top, moment.reshape(n, d), moment_weight)

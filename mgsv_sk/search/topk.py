"""The one top-k rule of catalogue search: best score first, ties to the lower column (or
catalogue row), reproducible. A leaf of the search: the catalogue and the ANN first stage
both rank with it."""

from __future__ import annotations

import numpy as np

__all__ = ["top_k_indices", "top_k_rows"]


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first, shape (n, k).

    Ties keep the lower column first (a stable order), so results are reproducible.

    >>> top_k_indices(np.array([[0.1, 0.9, 0.9, 0.3]]), 2)
    array([[1, 2]])
    """
    n, g = scores.shape
    k = min(k, g)
    if k < g:
        key = -scores
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
        # a tie across the partition boundary: the lower columns scoring like the k-th win
        picked = np.take_along_axis(key, part, axis=1)
        kth = picked.max(axis=1, keepdims=True)
        tied = (key == kth).sum(axis=1) > (picked == kth).sum(axis=1)
        if tied.any():
            part[tied] = np.argsort(key[tied], axis=1, kind="stable")[:, :k]
    else:
        part = np.tile(np.arange(g), (n, 1))
    part.sort(axis=1)  # stable tie order by column before the score sort
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def top_k_rows(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k_indices`'s rule on candidate lists: the ``k`` best (score, row) pairs
    of each query, best first, ties keeping the lower catalogue row first.

    Parameters
    ----------
    scores : ndarray (B, C)
        Candidate scores.
    rows : ndarray (B, C) or (C,)
        Catalogue row of each candidate (a (C,) vector is shared by every query). Rows
        of -1 (no candidate) score -inf and sort last.
    k : int
        Pairs kept per query (at most C).

    Returns
    -------
    scores : ndarray (B, min(k, C)) float32
    rows : ndarray (B, min(k, C)) int64

    Examples
    --------
    >>> s, r = top_k_rows(np.array([[0.5, 0.9, 0.5]]), np.array([7, 3, 2]), 2)
    >>> r.tolist(), s.astype(float).round(2).tolist()
    ([[3, 2]], [[0.9, 0.5]])
    """
    scores = np.asarray(scores, np.float32)
    rows = np.broadcast_to(np.asarray(rows, np.int64), scores.shape)
    # columns in row order (missing candidates last), so a column tie is a row tie
    order = np.argsort(np.where(rows < 0, np.iinfo(np.int64).max, rows), axis=1,
                       kind="stable")
    rows = np.take_along_axis(rows, order, axis=1)
    scores = np.where(rows < 0, -np.inf, np.take_along_axis(scores, order, axis=1))
    best = top_k_indices(scores, k)
    return (np.take_along_axis(scores, best, axis=1).astype(np.float32),
            np.take_along_axis(rows, best, axis=1))

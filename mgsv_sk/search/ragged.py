"""Ragged per-item arrays: batches of similar length and zero padding with a mask (the
catalogue's chunks, the batched inference and training all pad this way)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["pad", "sorted_batches"]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Index batches of items sorted by length (least padding), in a stable order.

    >>> [b.tolist() for b in sorted_batches(np.array([5, 1, 3]), 2)]
    [[1, 2], [0]]
    """
    order = np.argsort(lengths, kind="stable")
    for lo in range(0, len(order), batch_size):
        yield order[lo: lo + batch_size]


def pad(arrays: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """[T_i, width] arrays -> zero-padded [n, max T_i, width] float32 and bool mask [n, max T_i]."""
    longest = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), longest, width), np.float32)
    mask = np.zeros((len(arrays), longest), bool)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
        mask[i, : len(a)] = True
    return out, mask

"""Ragged per-item arrays: batches of similar length and zero padding with a mask (the
catalogue's chunks, the batched inference and training all pad this way)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["pad", "pad_flat", "sorted_batches"]


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


def pad_flat(flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items stored back to back (``flat`` [sum T_i, width], item i's ``lengths[i]`` rows
    after item i - 1's) -> zero-padded [n, max T_i, width] float32 and bool mask [n, max T_i].

    >>> out, mask = pad_flat(np.arange(3.0)[:, None], np.array([1, 2]))
    >>> out[..., 0].tolist(), mask.tolist()
    ([[0.0, 0.0], [1.0, 2.0]], [[True, False], [True, True]])
    """
    lengths = np.asarray(lengths, np.int64)
    mask = np.arange(int(lengths.max(initial=0)))[None, :] < lengths[:, None]  # [n, max T]
    out = np.zeros((len(lengths), mask.shape[1], flat.shape[1]), np.float32)
    out[mask] = flat  # row-major order of the mask = the items back to back
    return out, mask

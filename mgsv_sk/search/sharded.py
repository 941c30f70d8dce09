"""A catalogue split into shards across Dask workers, searched with an exact merge.

Each shard is a contiguous range of catalogue rows: its dual embeddings, its snippet rows
(X-Pool states, any :class:`~mgsv_sk.search.compact.CompactRows` storage) and its
first-stage index (:mod:`mgsv_sk.search.ann`, built on the worker). A shard is sent to its
worker once (``client.scatter`` to that worker); queries then travel to the shards, and
only per-shard top-k lists come back.

The two-stage search is the single-machine one, split exactly:

1. every shard returns its ``max(k, xpool_top_k)`` best tracks by dual score; merged, they
   give the catalogue's global dual top list (the global top-K is a subset of the union of
   the per-shard top-K);
2. each shard re-ranks *its* tracks among each video's global top ``xpool_top_k`` with a
   ``rerank`` callable (the model's X-Pool pair score), the rest of the list keeps its dual
   score minus ``margin``; the merged top-k is the single-machine catalogue's top-k.

Ties keep the lower catalogue row first at every merge, as the single-machine search does.
Torch-free (the ``rerank`` callable brings the model); Dask is imported by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mgsv_sk.search.ann import AnnIndex, AnnParams, build_index
from mgsv_sk.search.catalogue import top_k_rows

__all__ = ["Rerank", "Shard", "ShardedCatalogue", "shard_bounds"]


@dataclass
class Shard:
    """Catalogue rows ``start .. start + len(emb) - 1`` as one worker holds them.

    Attributes
    ----------
    start : int
        Global row of the shard's first track.
    emb : ndarray (n, D)
        Dual embeddings.
    offsets : ndarray (n + 1,)
        Snippet rows of local track i: ``offsets[i] .. offsets[i + 1] - 1``.
    states : array-like (R, D) or None
        X-Pool snippet states (ndarray or CompactRows), read by ``rerank``.
    index : AnnIndex or None
        First-stage index over ``emb`` (built on the worker).
    """

    start: int
    emb: np.ndarray
    offsets: np.ndarray
    states: Any = None
    index: AnnIndex | None = None

    def __len__(self) -> int:
        return len(self.emb)


#: ``rerank(shard, video_emb (1, D), rows (m,) local) -> (m,) float32``: the re-ranking score
#: (X-Pool) of one video against ``m`` of the shard's tracks.
Rerank = Callable[[Shard, np.ndarray, np.ndarray], np.ndarray]


def shard_bounds(n: int, n_shards: int) -> np.ndarray:
    """Row boundaries of ``n_shards`` contiguous, near-equal shards of ``n`` rows, (n_shards + 1,).

    Examples
    --------
    >>> shard_bounds(10, 3).tolist()
    [0, 4, 7, 10]
    """
    if n_shards < 1 or n_shards > n:
        raise ValueError(f"n_shards must be in [1, {n}] (one track per shard at least), "
                         f"got {n_shards}")
    sizes = np.full(n_shards, n // n_shards)
    sizes[: n % n_shards] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _slice_shard(start: int, stop: int, emb: np.ndarray, offsets: np.ndarray,
                 states: Any) -> Shard:
    lo, hi = int(offsets[start]), int(offsets[stop])
    local = (np.asarray(offsets[start: stop + 1]) - lo).astype(np.int64)
    part = None if states is None else np.ascontiguousarray(states[lo:hi])
    return Shard(start, np.ascontiguousarray(emb[start:stop], np.float32), local, part)


def _index_shard(shard: Shard, kind: str, params: AnnParams | None) -> Shard:  # on the worker
    return Shard(shard.start, shard.emb, shard.offsets, shard.states,
                 build_index(shard.emb, kind, params))


def _first_stage(shard: Shard, video_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    assert shard.index is not None
    scores, rows = shard.index.search(video_emb, min(k, len(shard)))
    return scores, np.where(rows < 0, -1, rows + shard.start)


def _second_stage(shard: Shard, video_emb: np.ndarray, cand: np.ndarray,
                  rerank: Rerank) -> np.ndarray:
    """Re-ranking scores of each video's candidates held by this shard, (B, K) (NaN for
    candidates of other shards)."""
    out = np.full(cand.shape, np.nan, np.float32)
    inside = (cand >= shard.start) & (cand < shard.start + len(shard))
    for b in range(len(cand)):
        cols = np.flatnonzero(inside[b])
        if len(cols):
            out[b, cols] = rerank(shard, video_emb[b: b + 1], cand[b, cols] - shard.start)
    return out


class ShardedCatalogue:
    """Shards of a catalogue held by Dask workers. Make it with :meth:`scatter`.

    Attributes
    ----------
    bounds : ndarray (n_shards + 1,)
        Global row boundaries of the shards.
    workers : list of str
        The worker holding each shard.
    """

    def __init__(self, client: Any, shards: Sequence[Any], bounds: np.ndarray,
                 workers: Sequence[str]) -> None:
        self.client, self.shards = client, list(shards)
        self.bounds, self.workers = bounds, list(workers)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    @classmethod
    def scatter(cls, client: Any, emb: np.ndarray, offsets: np.ndarray, states: Any = None,
                *, n_shards: int | None = None, index: str = "exact",
                params: AnnParams | None = None) -> ShardedCatalogue:
        """Split a catalogue's arrays into shards, one or more per worker, and index them.

        Parameters
        ----------
        client : distributed.Client
        emb : ndarray (N, D)
            Dual embeddings (may be memory-mapped: each shard's rows are read once).
        offsets : ndarray (N + 1,)
            Snippet-row offsets of the tracks into ``states``.
        states : array-like (R, D), optional
            X-Pool snippet states (ndarray, memory map or CompactRows); None: dual only.
        n_shards : int, optional
            Default: one per worker of ``client``.
        index : {"auto", "exact", "hnsw", "ivf"}
            First-stage index of every shard, built on its worker
            (:func:`mgsv_sk.search.ann.build_index`).
        params : AnnParams, optional
        """
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise ValueError("the Dask client has no workers; start some first, e.g. "
                             "LocalCluster(n_workers=2, threads_per_worker=1)")
        n = len(emb)
        if len(offsets) != n + 1:
            raise ValueError(f"offsets must have N + 1 = {n + 1} entries, got {len(offsets)}")
        bounds = shard_bounds(n, n_shards or len(workers))
        futures, owners = [], []
        for i in range(len(bounds) - 1):
            owner = workers[i % len(workers)]
            shard = _slice_shard(int(bounds[i]), int(bounds[i + 1]), emb, offsets, states)
            [data] = client.scatter([shard], workers=[owner], broadcast=False, hash=False)
            futures.append(client.submit(_index_shard, data, index, params, workers=[owner],
                                         allow_other_workers=False, pure=False))
            owners.append(owner)
        client.gather(futures)  # fail here, not at the first query, if a shard cannot index
        return cls(client, futures, bounds, owners)

    def _map(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        tasks = [self.client.submit(fn, shard, *args, workers=[w], allow_other_workers=False,
                                    pure=False) for shard, w in zip(self.shards, self.workers)]
        return list(self.client.gather(tasks))

    def search(self, video_emb: np.ndarray, k: int, *, xpool_top_k: int | None = None,
               rerank: Rerank | None = None, margin: float = 4.0
               ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best tracks of each video over every shard, best first.

        Parameters
        ----------
        video_emb : ndarray (B, D)
            Unit-norm video embeddings.
        k : int
            Tracks per video (at most N).
        xpool_top_k : int, optional
            With ``rerank``: re-rank each video's global top ``xpool_top_k`` by dual score
            (the two-stage search). None: ``rerank`` re-ranks the top ``k``.
        rerank : callable, optional
            ``rerank(shard, video_emb (1, D), rows (m,)) -> (m,)``, run on the shards'
            workers; the final score of a re-ranked track is its dual score plus this.
            None: dual scores only.
        margin : float
            Tracks of the list not re-ranked keep their dual score minus this (the
            catalogue's ``TWO_STAGE_MARGIN``).

        Returns
        -------
        scores : ndarray (B, min(k, N)) float32
        rows : ndarray (B, min(k, N)) int64
            Global catalogue rows; ties keep the lower row first.
        """
        v = np.ascontiguousarray(video_emb, np.float32)
        k = min(int(k), len(self))
        top = k if xpool_top_k is None or rerank is None else max(k, int(xpool_top_k))
        top = min(top, len(self))
        parts = self._map(_first_stage, v, top)
        dual, rows = top_k_rows(np.concatenate([p[0] for p in parts], axis=1),
                                np.concatenate([p[1] for p in parts], axis=1), top)
        if rerank is None:
            return dual[:, :k], rows[:, :k]
        n_cand = top if xpool_top_k is None else min(int(xpool_top_k), top)
        cand = rows[:, :n_cand]
        extra = np.full(cand.shape, np.nan, np.float32)
        for part in self._map(_second_stage, v, cand, rerank):
            extra = np.where(np.isnan(part), extra, part)
        final = dual - np.float32(margin)
        final[:, :n_cand] = dual[:, :n_cand] + extra
        return top_k_rows(final, rows, k)

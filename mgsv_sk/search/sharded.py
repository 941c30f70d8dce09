"""A catalogue split into shards across Dask workers, searched with an exact merge.

A grounder hands its search to the shards with
``grounder.set_catalogue(grounder.shard_catalogue(client))``: ``predict``, ``rank`` and
``decision_function`` then retrieve on the workers and ground the retrieved tracks here
(the moment head reads the catalogue's tokens, which stay with the grounder).

Each shard is a contiguous range of catalogue rows: its dual embeddings, its snippet rows
(X-Pool states, any :class:`~mgsv_sk.search.compact.CompactRows` storage) and its
first-stage index (:mod:`mgsv_sk.search.ann`, built on the worker). A shard is sent to its
worker once (``client.scatter`` to that worker); queries then travel to the shards, and
only per-shard top-k lists come back.

The two-stage search is the single-machine one, split exactly:

1. every shard returns its ``max(k, xpool_top_k)`` best tracks by dual score; merged, they
   give the catalogue's global dual top list (the global top-K is a subset of the union of
   the per-shard top-K);
2. each shard re-scores *its* tracks among each video's global top ``xpool_top_k`` with
   the backend's :class:`~mgsv_sk.search.catalogue.Scorer` (the model's dual + X-Pool pair
   score, pickled to the workers once per query), the rest of the list keeps its dual score
   minus :data:`~mgsv_sk.search.catalogue.TWO_STAGE_MARGIN`; the merged top-k is the
   single-machine catalogue's top-k.

Ties keep the lower catalogue row first at every merge, as the single-machine search does.
Torch-free (the scorer brings the model); Dask is imported by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mgsv_sk.errors import InvalidInputError
from mgsv_sk.search.ann import AnnIndex, AnnParams, build_index, resolve_kind
from mgsv_sk.search.catalogue import Catalogue
from mgsv_sk.search.protocols import Scorer
from mgsv_sk.search.ragged import pad
from mgsv_sk.search.retrieval import TWO_STAGE_MARGIN
from mgsv_sk.search.topk import top_k_rows

__all__ = ["Shard", "ShardedCatalogue", "shard_bounds"]


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
    states : ndarray (R, D) or None
        X-Pool snippet states, read by the scorer.
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


def shard_bounds(n: int, n_shards: int) -> np.ndarray:
    """Row boundaries of ``n_shards`` contiguous, near-equal shards of ``n`` rows, (n_shards + 1,).

    Examples
    --------
    >>> shard_bounds(10, 3).tolist()
    [0, 4, 7, 10]
    """
    if n_shards < 1 or n_shards > n:
        raise InvalidInputError(f"n_shards must be in [1, {n}] (one track per shard at least), "
                         f"got {n_shards}")
    sizes = np.full(n_shards, n // n_shards)
    sizes[: n % n_shards] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _slice_shard(catalogue: Catalogue, start: int, stop: int, with_states: bool) -> Shard:
    """Rows ``start .. stop - 1`` of the catalogue, read once (compact rows decoded)."""
    rows = np.arange(start, stop)  # never empty: shard_bounds gives each shard a track
    local = np.concatenate([[0], np.cumsum(catalogue.lengths[start:stop])]).astype(np.int64)
    return Shard(start, catalogue.emb(rows), local,
                 catalogue.states(rows) if with_states else None)


def _index_shard(shard: Shard, kind: str, params: AnnParams | None) -> Shard:  # on the worker
    return Shard(shard.start, shard.emb, shard.offsets, shard.states,
                 build_index(shard.emb, kind, params))


def _first_stage(shard: Shard, video_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    assert shard.index is not None
    scores, rows = shard.index.search(video_emb, min(k, len(shard)))
    return scores, np.where(rows < 0, -1, rows + shard.start)


def _second_stage(shard: Shard, video_emb: np.ndarray, cand: np.ndarray,
                  scorer: Scorer) -> np.ndarray:
    """The scorer's scores of each video's candidates held by this shard, (B, K) (NaN for
    candidates of other shards)."""
    out = np.full(cand.shape, np.nan, np.float32)
    videos, cols = np.nonzero((cand >= shard.start) & (cand < shard.start + len(shard)))
    if len(videos):
        out[videos, cols] = scorer.pairs(video_emb[videos], cand[videos, cols] - shard.start,
                                         _ShardRows(shard))
    return out


class _ShardRows:
    """A shard as a scorer reads it (:class:`mgsv_sk.search.catalogue.SnippetRows`), in the
    shard's local rows."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    def emb(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.shard.emb[np.asarray(rows, np.int64)], np.float32)

    def padded_states(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = self.shard
        assert shard.states is not None
        return pad([shard.states[shard.offsets[r]: shard.offsets[r + 1]] for r in rows],
                   shard.emb.shape[1])


class ShardedCatalogue:
    """Shards of a catalogue held by Dask workers. Make it with :meth:`scatter` (or a
    grounder's ``shard_catalogue``); give it to the grounder with ``set_catalogue``.

    Attributes
    ----------
    ids : tuple of str
        The catalogue's track ids, in row order.
    bounds : ndarray (n_shards + 1,)
        Global row boundaries of the shards.
    workers : list of str
        The worker holding each shard.
    scorer : Scorer or None
        The backend's score (dual + X-Pool), sent to the workers; None: dual only.
    exact : bool
        Whether the shards' first stage scans every embedding (else HNSW / IVF).
    """

    def __init__(self, client: Any, shards: Sequence[Any], bounds: np.ndarray,
                 workers: Sequence[str], ids: Sequence[str], scorer: Scorer | None,
                 exact: bool) -> None:
        self.client, self.shards = client, list(shards)
        self.bounds, self.workers = bounds, list(workers)
        self.ids, self.scorer, self.exact = tuple(ids), scorer, exact

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __repr__(self) -> str:
        return (f"ShardedCatalogue({len(self)} tracks in {len(self.shards)} shards on "
                f"{len(set(self.workers))} workers)")

    @classmethod
    def scatter(cls, client: Any, catalogue: Catalogue, scorer: Scorer | None = None, *,
                n_shards: int | None = None, index: str = "exact",
                params: AnnParams | None = None) -> ShardedCatalogue:
        """Split a catalogue into shards, one or more per worker, and index them there.

        Parameters
        ----------
        client : distributed.Client
        catalogue : Catalogue
            Its embeddings and X-Pool snippet states are read once, shard by shard
            (memory-mapped or compact rows included); the tokens stay where they are.
        scorer : Scorer, optional
            The backend's score of (video, track) pairs, pickled to the workers; None:
            the shards rank by the dual score only.
        n_shards : int, optional
            Default: one per worker of ``client``.
        index : {"auto", "exact", "hnsw", "ivf"}
            First-stage index of every shard, built on its worker
            (:func:`mgsv_sk.search.ann.build_index`).
        params : AnnParams, optional
        """
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise InvalidInputError("the Dask client has no workers; start some first, e.g. "
                             "LocalCluster(n_workers=2, threads_per_worker=1)")
        if scorer is not None and not catalogue.has_xpool:
            raise InvalidInputError("a scorer re-scores X-Pool snippet states, and this catalogue "
                             "has none; scatter it with scorer=None (dual score only)")
        bounds = shard_bounds(len(catalogue), n_shards or len(workers))
        futures, owners = [], []
        for i in range(len(bounds) - 1):
            owner = workers[i % len(workers)]
            shard = _slice_shard(catalogue, int(bounds[i]), int(bounds[i + 1]),
                                 scorer is not None)
            [data] = client.scatter([shard], workers=[owner], broadcast=False, hash=False)
            futures.append(client.submit(_index_shard, data, index, params, workers=[owner],
                                         allow_other_workers=False, pure=False))
            owners.append(owner)
        client.gather(futures)  # fail here, not at the first query, if a shard cannot index
        exact = all(resolve_kind(index, int(n)) == "exact" for n in np.diff(bounds))
        return cls(client, futures, bounds, owners, catalogue.ids, scorer, exact)

    def _map(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        tasks = [self.client.submit(fn, shard, *args, workers=[w], allow_other_workers=False,
                                    pure=False) for shard, w in zip(self.shards, self.workers)]
        return list(self.client.gather(tasks))

    def search(self, video_emb: np.ndarray, k: int, *, xpool_top_k: int | None = None,
               rescore: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best tracks of each video over every shard, best first.

        Parameters
        ----------
        video_emb : ndarray (B, D)
            Unit-norm video embeddings.
        k : int
            Tracks per video (at most N).
        xpool_top_k : int, optional
            Re-score each video's global top ``xpool_top_k`` by dual score with the scorer
            (the two-stage search); the rest of the list keeps its dual score minus
            ``TWO_STAGE_MARGIN``. None: the scorer re-scores the top ``k``.
        rescore : bool
            False: dual scores only, even with a scorer.

        Returns
        -------
        scores : ndarray (B, min(k, N)) float32
        rows : ndarray (B, min(k, N)) int64
            Global catalogue rows; ties keep the lower row first.
        """
        v = np.ascontiguousarray(video_emb, np.float32)
        k = min(int(k), len(self))
        scorer = self.scorer if rescore else None
        top = k if xpool_top_k is None or scorer is None else max(k, int(xpool_top_k))
        top = min(top, len(self))
        parts = self._map(_first_stage, v, top)
        dual, rows = top_k_rows(np.concatenate([p[0] for p in parts], axis=1),
                                np.concatenate([p[1] for p in parts], axis=1), top)
        if scorer is None:
            return dual[:, :k], rows[:, :k]
        n_cand = top if xpool_top_k is None else min(int(xpool_top_k), top)
        cand = rows[:, :n_cand]
        score = np.full(cand.shape, np.nan, np.float32)
        for part in self._map(_second_stage, v, cand, scorer):
            score = np.where(np.isnan(part), score, part)
        final = dual - np.float32(TWO_STAGE_MARGIN)
        final[:, :n_cand] = score
        return top_k_rows(final, rows, k)

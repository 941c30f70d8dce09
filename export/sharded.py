"""An ONNX bundle's catalogue sharded across Dask workers, served without torch.

:class:`mgsv_sk.search.sharded.ShardedCatalogue` holds the shards and merges their top-k
lists; this module gives it a bundle's catalogue and the bundle's X-Pool score as the
``rerank`` callable, so ``search`` answers as :class:`export.runtime.OnnxGrounder`'s own
two-stage search (``xpool_top_k``) does. It is the torch-free twin of
:func:`mgsv_sk.infer.sharded.shard_grounder`:

    >>> from distributed import Client, LocalCluster                     # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))   # doctest: +SKIP
    >>> sharded, rerank = shard_bundle(client, "bundle/")                 # doctest: +SKIP
    >>> scores, rows = sharded.search(video_emb, 10, xpool_top_k=100,   # doctest: +SKIP
    ...                               rerank=rerank)

An onnxruntime session cannot be pickled, so the re-rank callable carries the bundle's
*path*; each worker process opens the bundle once (the cache of :mod:`export.dask`), so
the path must be readable at the same location on every worker. Install Dask with
``pip install "mgsv-sk[dask]"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.search.ann import AnnParams
from mgsv_sk.search.catalogue import pad
from mgsv_sk.search.sharded import Shard, ShardedCatalogue

from .dask import _grounder
from .manifest import read_manifest
from .runtime import OnnxGrounder

__all__ = ["OnnxXPoolRerank", "shard_bundle"]


class OnnxXPoolRerank:
    """``rerank`` callable of :meth:`ShardedCatalogue.search`: the bundle's X-Pool score of
    one video against a shard's tracks (its ``score_pairs`` graph, less the dual score that
    the search adds itself).

    Parameters
    ----------
    bundle : path
        The bundle, readable at this path on every worker.
    n_threads : int, optional
        onnxruntime intra-op threads per worker (None: its default).
    precision : {"fp32", "int8"}, optional
        Graphs to run (None: the bundle's default).
    """

    def __init__(self, bundle: str | os.PathLike[str], n_threads: int | None = None,
                 precision: str | None = None) -> None:
        manifest = read_manifest(bundle)  # a clear error here, not on a worker
        if not manifest["retrieval"]["use_xpool"]:
            raise ValueError(f"the bundle {bundle!s} has no X-Pool score (exported from a "
                             "model without 'xpool'); search the sharded catalogue with "
                             "rerank=None")
        self.bundle, self.n_threads, self.precision = str(bundle), n_threads, precision
        self.use_dual = bool(manifest["retrieval"]["use_dual"])

    def __call__(self, shard: Shard, video_emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """X-Pool scores of video_emb (1, D) against the shard's ``rows`` (m,) -> (m,)."""
        grounder = _grounder(self.bundle, self.n_threads, self.precision)
        assert shard.states is not None
        states, mask = pad([np.asarray(shard.states[shard.offsets[r]: shard.offsets[r + 1]],
                                       np.float32) for r in rows], shard.emb.shape[1])
        video = np.repeat(np.ascontiguousarray(video_emb, np.float32), len(rows), axis=0)
        music = np.ascontiguousarray(shard.emb[rows], np.float32)
        total = grounder._run("score_pairs", video_emb=video, music_emb=music,
                              xpool_states=states, music_mask=mask)[0]
        if not self.use_dual:
            return np.asarray(total, np.float32)
        return (total - (video * music).sum(axis=1)).astype(np.float32)


def shard_bundle(client: Any, bundle: str | os.PathLike[str], *, n_shards: int | None = None,
                 index: str = "exact", params: AnnParams | None = None,
                 n_threads: int | None = None, precision: str | None = None
                 ) -> tuple[ShardedCatalogue, OnnxXPoolRerank | None]:
    """Shard a bundle's catalogue across ``client``'s workers: each shard's rows are read
    from the bundle's files once (compact rows decoded to float32 on the way) and its
    first-stage index is built on its worker (``index``, ``params``).

    Returns
    -------
    sharded : ShardedCatalogue
        Rows are positions in the bundle's catalogue (``OnnxGrounder.catalogue_ids_``).
    rerank : OnnxXPoolRerank or None
        Pass it to ``sharded.search(..., rerank=rerank)`` (None: a dual-only bundle).
    """
    served = OnnxGrounder.load(Path(bundle), n_threads, precision=precision)
    [part] = served._catalogue.parts  # a bundle's catalogue: one part, read on demand
    sharded = ShardedCatalogue.scatter(client, part.emb, part.offsets, part.states,
                                       n_shards=n_shards, index=index, params=params)
    rerank = (OnnxXPoolRerank(bundle, n_threads, precision)
              if served.manifest["retrieval"]["use_xpool"] else None)
    return sharded, rerank

"""A fitted MGSVGrounder's catalogue sharded across Dask workers (torch side).

:class:`mgsv_sk.search.sharded.ShardedCatalogue` holds the shards and merges their top-k
lists; this module brings the model's X-Pool score as its ``rerank`` callable, so
``search`` answers as the grounder's own two-stage search (``xpool_top_k``) does:

    >>> from distributed import Client, LocalCluster                    # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> sharded, rerank = shard_grounder(client, grounder)              # doctest: +SKIP
    >>> video_emb = grounder._encode_videos(frame, source).emb           # doctest: +SKIP
    >>> scores, rows = sharded.search(video_emb, 10, xpool_top_k=100,  # doctest: +SKIP
    ...                               rerank=rerank)

Install Dask with ``pip install "mgsv-sk[dask]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mgsv_sk.infer.catalogue import TWO_STAGE_MARGIN
from mgsv_sk.infer.padding import pad_stack
from mgsv_sk.search.ann import AnnParams
from mgsv_sk.search.sharded import Shard, ShardedCatalogue

if TYPE_CHECKING:
    from mgsv_sk.nn.model import MaDe

__all__ = ["TWO_STAGE_MARGIN", "XPoolRerank", "shard_grounder"]


class XPoolRerank:
    """``rerank`` callable of :meth:`ShardedCatalogue.search`: the model's X-Pool score of one
    video against a shard's tracks, computed as
    :class:`mgsv_sk.infer.catalogue.MusicCatalogue` does.

    Parameters
    ----------
    model : MaDe
        The fitted network (``grounder.model_``), pickled once per task to the workers.
    """

    def __init__(self, model: MaDe) -> None:
        if model.xpool is None:
            raise ValueError("the model has no X-Pool score (retrieval_scores without "
                             "'xpool'); search the sharded catalogue with rerank=None")
        self.model = model

    @torch.no_grad()
    def __call__(self, shard: Shard, video_emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """X-Pool scores of video_emb (1, D) against the shard's ``rows`` (m,) -> (m,)."""
        assert self.model.xpool is not None
        states, mask = pad_stack([shard.states[shard.offsets[r]: shard.offsets[r + 1]]
                                  for r in rows])  # [m,S,D], [m,S]
        v = torch.from_numpy(np.ascontiguousarray(video_emb, np.float32))
        scores = self.model.xpool.scores_from_states(v, states, mask)  # [1,m]
        return scores[0].numpy()


def shard_grounder(client: Any, grounder: Any, *, n_shards: int | None = None,
                   index: str = "exact", params: AnnParams | None = None
                   ) -> tuple[ShardedCatalogue, XPoolRerank | None]:
    """Shard a fitted grounder's catalogue (``catalogue_``) across ``client``'s workers.

    Returns
    -------
    sharded : ShardedCatalogue
        Rows are positions in ``grounder.catalogue_ids_``.
    rerank : XPoolRerank or None
        Pass it to ``sharded.search(..., rerank=rerank)`` (None: a dual-only model).
    """
    emb, _, states, offsets = grounder.catalogue_.arrays()  # float32, back to back
    sharded = ShardedCatalogue.scatter(client, emb, offsets, states,
                                       n_shards=n_shards, index=index, params=params)
    rerank = XPoolRerank(grounder.model_) if grounder.model_.xpool is not None else None
    return sharded, rerank

"""What the search asks of the pieces a backend or a deployment brings: the backend's
:class:`Scorer` (the network part of a retrieval score: ``mgsv_sk.infer.catalogue.
TorchXPool``, ``export.runtime``'s onnxruntime one), the :class:`SnippetRows` a scorer
reads, and the :class:`Shards` a catalogue may hand its search to
(:class:`mgsv_sk.search.sharded.ShardedCatalogue`)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mgsv_sk.search.parts import Chunk

__all__ = ["Scorer", "Shards", "SnippetRows"]


class Shards(Protocol):
    """What a catalogue asks of the shards that search it
    (:class:`mgsv_sk.search.sharded.ShardedCatalogue`)."""

    ids: tuple[str, ...]
    exact: bool

    def __len__(self) -> int: ...

    def search(self, video_emb: np.ndarray, k: int, *, xpool_top_k: int | None = None,
               rescore: bool = True) -> tuple[np.ndarray, np.ndarray]: ...


class SnippetRows(Protocol):
    """What a scorer reads of the tracks it scores: a :class:`Catalogue`, or one shard of
    it on a Dask worker (:class:`mgsv_sk.search.sharded.Shard`)."""

    def emb(self, rows: np.ndarray) -> np.ndarray:
        """Dual embeddings of ``rows``, [k, D] float32."""

    def padded_states(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X-Pool snippet states of ``rows``, padded [k, S, D], and their mask [k, S]."""


class Scorer(Protocol):
    """The network part of a retrieval score, one implementation per backend (torch eager,
    onnxruntime). Both methods return the model's whole score: dual + X-Pool (the enabled
    ones). A scorer that travels to Dask workers (shards) must pickle."""

    def tracks(self, video_emb: np.ndarray, chunk: Chunk) -> np.ndarray:
        """Score of unit-norm videos [B, D] against every track of ``chunk``, [B, U]."""

    def pairs(self, video_emb: np.ndarray, rows: np.ndarray, cat: SnippetRows) -> np.ndarray:
        """Score of (video i, row ``rows[i]`` of ``cat``), [B]."""

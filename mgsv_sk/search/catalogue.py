"""The music catalogue both backends serve: encoded tracks in ragged arrays (the search
over it is :mod:`mgsv_sk.search.retrieval`).

A catalogue keeps, per track, the dual embedding h0(M) [D], the snippet tokens [S, D] the
moment detector reads, and the layer-normed X-Pool snippet states [S, D] (X-Pool depends
on the video only through its query, so the per-track part is computed once). Ragged
per-track arrays are stored back to back with offsets, so a catalogue costs its valid
snippets only. Scoring runs over chunks of tracks and of videos: no [videos x tracks x D]
tensor is ever built in one piece. The network parts of a score (X-Pool) come from the
backend as a :class:`mgsv_sk.search.protocols.Scorer` (one per backend:
``mgsv_sk.infer.catalogue.TorchXPool``, ``mgsv_sk.export.runtime``'s onnxruntime one); everything
else is here, once. A catalogue may
also hand its search to shards on Dask workers (:meth:`Catalogue.with_shards`,
:mod:`.sharded`); the same scorer then runs on the shards.

A :class:`Catalogue` is an immutable snapshot made of parts (the bundle's arrays, then one
part per ``add_tracks`` call), so appending never copies the bundle's arrays and a request
that started on the old snapshot finishes on it. Its only lazily built state, the padded
chunks for the full X-Pool scan, is made once under a lock.

The per-snippet arrays of the bundle (tokens and X-Pool snippet states: ~11.6 GB for
100,000 tracks) are read row range by row range with ``os.pread``
(:class:`mgsv_sk.search.parts.NpyRows`): the data sit in the OS page cache, shared and
evictable, and the process holds only what a request copies out. A memory map would
instead count every page it touched in the process's resident memory, and with readahead
and large page-cache folios one 115 KB track maps about 2 MB (measured: 20 two-stage
queries against 100,000 tracks left 2.8 GB mapped). The track embeddings, read in full by
every dual-score pass, stay memory-mapped for those scans; the scattered rows a two-stage
search re-ranks are read with ``pread`` too (with an ANN first stage at 1M tracks,
gathering them from the map left about 1 GB of the 1 GB file resident after 200 queries).

For catalogues of millions of tracks (:meth:`Catalogue.compacted`, or a bundle whose
manifest says so) the per-snippet arrays may be stored float16 / int8 (:mod:`.compact`,
decoded as read) and the dual top-K of the two-stage search may come from an ANN index
(:mod:`.ann`); both backends get them through this module's search.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mgsv_sk.errors import InvalidInputError
from mgsv_sk.search.compact import CompactRows, read_concat, read_ranges, take_rows
from mgsv_sk.search.parts import Chunk, Part, Rows
from mgsv_sk.search.protocols import Shards
from mgsv_sk.search.ragged import pad_flat
from mgsv_sk.search.topk import top_k_rows
from mgsv_sk.search.tracks import TrackIndex

if TYPE_CHECKING:
    from mgsv_sk.search.ann import AnnIndex, AnnParams

__all__ = ["Catalogue"]

CatalogueT = TypeVar("CatalogueT", bound="Catalogue")


class Catalogue(TrackIndex):
    """Encoded tracks, in catalogue order, from one or more parts; ``ann``: a first-stage
    index over the first part's embeddings (:mod:`mgsv_sk.search.ann`), or None."""

    def __init__(self, parts: Sequence[Part], ann: AnnIndex | None = None) -> None:
        self.parts = tuple(parts)
        self.ann = ann
        super().__init__([i for p in self.parts for i in p.ids])
        self._starts = np.cumsum([0] + [len(p.ids) for p in self.parts]).astype(np.int64)
        self.lengths = np.concatenate([np.diff(p.offsets) for p in self.parts]).astype(np.int64)
        self.has_xpool = all(p.states is not None for p in self.parts)
        #: The shards on Dask workers that search these tracks (:meth:`with_shards`).
        self.shards: Shards | None = None
        self._chunks: dict[int, list[Chunk]] = {}
        self._lock = threading.Lock()

    @property
    def compact(self) -> bool:
        """Whether a part stores its X-Pool states in fewer bytes than float32 (float16 or
        int8: :meth:`compacted`, or a compact bundle's catalogue)."""
        return any(isinstance(p.states, CompactRows) and p.states.states != "float32"
                   for p in self.parts)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]  # a lock is not copied; the padded chunks are rebuilt on demand
        state["_chunks"] = {}
        state["shards"] = None  # a Dask cluster's futures do not travel: search here
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @classmethod
    def from_arrays(cls, ids: Sequence[str], emb: np.ndarray, tokens: Rows,
                    xpool_states: Rows | None, offsets: np.ndarray) -> Catalogue:
        """One part from back-to-back arrays (as saved): emb [N, D], tokens and X-Pool
        states [R, D], offsets [N + 1]."""
        return cls([Part(tuple(str(i) for i in ids), emb, np.asarray(offsets, np.int64),
                         tokens, xpool_states)])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """emb [N, D], tokens [R, D], X-Pool states [R, D] (or None) and offsets [N + 1]
        of the whole catalogue, back to back (what a saved model or a bundle stores)."""
        p = self.parts[0]
        if len(self.parts) == 1 and isinstance(p.tokens, np.ndarray) and (
                p.states is None or isinstance(p.states, np.ndarray)):
            return (np.asarray(p.emb, np.float32), np.asarray(p.tokens, np.float32),
                    None if p.states is None else np.asarray(p.states, np.float32),
                    np.asarray(p.offsets, np.int64))
        def whole(rows: Rows) -> np.ndarray:
            return np.asarray(rows[0: len(rows)], np.float32)

        emb = np.concatenate([np.asarray(p.emb, np.float32) for p in self.parts])
        tokens = np.concatenate([whole(p.tokens) for p in self.parts])
        states = (np.concatenate([whole(p.states) for p in self.parts if p.states is not None])
                  if self.has_xpool else None)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        return emb, tokens, states, offsets

    def check_finite(self) -> Catalogue:
        """The catalogue itself, after checking every track's arrays are finite (a NaN
        never enters a served catalogue)."""
        from mgsv_sk.data import require_finite

        rows = np.arange(len(self))
        bad = ~np.isfinite(self.emb(rows)).all(axis=1)
        for field in ("tokens", "states") if self.has_xpool else ("tokens",):
            for r, data in enumerate(self._slices(field, rows)):
                bad[r] |= not np.isfinite(data).all()
        require_finite(self.ids, bad, "track")
        return self

    def with_part(self, part: Part) -> Catalogue:
        """A new snapshot with ``part``'s tracks appended (the index still covers the
        first part; :meth:`first_stage` scans the added ones)."""
        return Catalogue(self.parts + (part,), self.ann)

    def compacted(self, states: str = "float32", index: str = "exact",
                  params: AnnParams | None = None) -> Catalogue:
        """A copy (same class) whose snippet tokens and X-Pool states are stored as
        ``states`` ("float32", "float16", "int8"; :mod:`mgsv_sk.search.compact`) and whose
        embeddings are indexed for the first stage (``index``: "auto", "exact", "hnsw",
        "ivf"; :mod:`mgsv_sk.search.ann`); the parts are merged into one first."""
        import copy

        from mgsv_sk.search.ann import build_index
        from mgsv_sk.search.compact import check_state_dtype, encode_rows

        check_state_dtype(states)
        emb, tokens, xpool, offsets = self.arrays()  # float32, decoded

        def store(data: np.ndarray) -> Rows:
            return data if states == "float32" else encode_rows(data, states)

        out = copy.copy(self)  # a fresh lock and no padded chunks (__getstate__)
        out.parts = (Part(tuple(self.ids), emb, offsets, store(tokens),
                          None if xpool is None else store(xpool)),)
        out._starts = np.array([0, len(self)], np.int64)
        out.ann = build_index(emb, index, params)
        return out

    def with_shards(self: CatalogueT, shards: Shards) -> CatalogueT:
        """This catalogue, its retrieval search run by ``shards`` (scattered from it, see
        :meth:`ShardedCatalogue.scatter`): the moment head still reads the tokens here."""
        if tuple(shards.ids) != tuple(self.ids):
            raise InvalidInputError("these shards were scattered from another catalogue (their "
                                    f"{len(shards)} tracks are not this catalogue's {len(self)}); "
                                    "scatter this grounder's catalogue (shard_catalogue) and "
                                    "pass that")
        out = copy.copy(self)
        out.shards = shards
        return out

    @property
    def approximate(self) -> bool:
        """Whether the dual top-k comes from an approximate index (HNSW / IVF)."""
        return self.ann is not None and not self.ann.exact

    def first_stage(self, video_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Dual scores and rows of each video's ``k`` best tracks, (B, k) each, best first:
        the index over the first part, merged with an exact scan of any added parts."""
        assert self.ann is not None
        scores, rows = self.ann.search(video_emb, k)
        if len(self.parts) > 1:
            rest = np.concatenate([(np.asarray(p.emb) @ video_emb.T).T for p in self.parts[1:]],
                                  axis=1)  # [B, added tracks]
            cols = np.broadcast_to(np.arange(self._starts[1], len(self)), rest.shape)
            scores, rows = top_k_rows(np.concatenate([scores, rest], axis=1),
                                      np.concatenate([rows, cols], axis=1), k)
        return scores, rows

    # -- reading rows ---------------------------------------------------------------------
    def _locate(self, row: int) -> tuple[Part, int]:
        p = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self.parts[p], row - int(self._starts[p])

    def emb(self, rows: np.ndarray) -> np.ndarray:
        """Track embeddings of ``rows``, [k, D] float32."""
        if len(self.parts) == 1:
            part = self.parts[0]
            return take_rows(part.emb if part.emb_file is None else part.emb_file, rows)
        out = []
        for r in rows:
            part, i = self._locate(int(r))
            out.append(part.emb[i])
        return np.asarray(out, np.float32).reshape(len(out), -1)

    def _slices(self, field: str, rows: np.ndarray) -> list[np.ndarray]:
        if len(self.parts) == 1:  # the common case: no part lookup per row
            part = self.parts[0]
            data, offsets = getattr(part, field), part.offsets.tolist()
            return read_ranges(data, [(offsets[r], offsets[r + 1])
                                      for r in np.asarray(rows).tolist()])
        out = []
        for r in rows:
            part, i = self._locate(int(r))
            out.append(getattr(part, field)[part.offsets[i]: part.offsets[i + 1]])
        return out

    def states(self, rows: np.ndarray) -> np.ndarray:
        """X-Pool snippet states of ``rows``, back to back (their offsets follow
        ``lengths[rows]``): [sum S, D] float32, compact rows decoded."""
        return self._concat("states", np.asarray(rows, np.int64).reshape(-1))

    def padded_tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Snippet tokens of ``rows``, padded: [k, max S, D] float32 and mask [k, max S]."""
        return self._padded("tokens", rows)

    def padded_states(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X-Pool snippet states of ``rows``, padded: [k, max S, D], mask [k, max S]."""
        return self._padded("states", rows)

    def _padded(self, field: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64).reshape(-1)
        return pad_flat(self._concat(field, rows), self.lengths[rows])

    def _concat(self, field: str, rows: np.ndarray) -> np.ndarray:
        """The ``field`` rows of ``rows`` back to back, [sum S, D] float32."""
        if len(self.parts) == 1:  # every range read at once, decoded in one pass
            part = self.parts[0]
            return read_concat(getattr(part, field), list(zip(
                part.offsets[rows].tolist(), part.offsets[rows + 1].tolist())))
        return np.concatenate(self._slices(field, rows)).astype(np.float32, copy=False)

    def dual(self, video_emb: np.ndarray) -> np.ndarray:
        """cos(h(v), h0(M)) of unit-norm videos [B, D] against every track, [B, N] float32."""
        # [N, D] @ [D, B] reads the (possibly memory-mapped) rows in order: a fast GEMV.
        return np.ascontiguousarray(
            np.concatenate([(np.asarray(p.emb) @ video_emb.T).T for p in self.parts], axis=1))

    def chunks(self, size: int) -> list[Chunk]:
        """Every track in chunks of ``size`` tracks of similar length (least padding), snippet
        states decoded once and kept (the full X-Pool scan reads them every query)."""
        cached = self._chunks.get(size)
        if cached is not None:
            return cached
        with self._lock:
            if size not in self._chunks:
                order = np.argsort(self.lengths, kind="stable")
                compact = self.compact
                built = []
                for lo in range(0, len(order), size):
                    rows = order[lo: lo + size]
                    read = partial(self._concat, "states", rows)  # also to read them again
                    built.append(Chunk(rows, self.emb(rows), read(), self.lengths[rows],
                                       source=read, compact=compact))
                self._chunks[size] = built
            return self._chunks[size]
